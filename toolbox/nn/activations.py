"""Activation layers by name, so that blocks can take ``activation="gelu"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import nn

from toolbox.nn._checks import check_choice

ActivationName = Literal["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "none"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "none": nn.Identity,
}


def make_activation(name: ActivationName, argument: str = "activation") -> nn.Module:
    """A new activation layer; ``argument`` names the caller's option in the error message."""
    check_choice(argument, name, ACTIVATIONS)
    return ACTIVATIONS[name]()
