"""A multilayer perceptron over the last dimension of its inputs."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

import torch
from torch import nn

from toolbox.nn._checks import check_choice, check_positive, check_probability
from toolbox.nn.activations import ACTIVATIONS, ActivationName, make_activation


class _LastDimBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last dimension of (..., features), pooling all leading dims."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class MLP(nn.Sequential):
    """Linear layers over (..., in_features) inputs, giving (..., out_features).

    Each hidden layer is linear -> norm -> activation -> dropout; the last layer is linear
    only, so its outputs are unbounded (logits, regression values).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int,
        *,
        activation: ActivationName = "relu",
        dropout: float = 0.0,
        norm: Literal["none", "batch", "layer"] = "none",
        bias: bool = True,
    ) -> None:
        check_positive("in_features", in_features)
        check_positive("out_features", out_features)
        for width in hidden_features:
            check_positive("each of hidden_features", width)
        check_probability("dropout", dropout)
        check_choice("norm", norm, ("none", "batch", "layer"))
        check_choice("activation", activation, ACTIVATIONS)

        layers: list[nn.Module] = []
        widths = [in_features, *hidden_features]
        for width_in, width_out in pairwise(widths):
            layers.append(nn.Linear(width_in, width_out, bias))
            if norm == "batch":
                layers.append(_LastDimBatchNorm(width_out))
            elif norm == "layer":
                layers.append(nn.LayerNorm(width_out))
            layers.append(make_activation(activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], out_features, bias))
        super().__init__(*layers)
