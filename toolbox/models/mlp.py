from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from toolbox.models import ModelConfig, register_model

Activation = Literal["relu", "gelu", "silu", "tanh"]
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "tanh": "Tanh"}


@register_model("mlp")
@dataclass(frozen=True)
class MLP(ModelConfig):
    """A multi-layer perceptron over the flattened input."""

    hidden_sizes: tuple[int, ...] = (256,)
    """Widths of the hidden layers, in units, first to last (none: a linear model)."""
    activation: Activation = "relu"
    """Non-linearity after each hidden layer."""
    dropout: float = 0.1
    """Dropout probability after each hidden layer, in [0, 1)."""
    norm: Literal["none", "batch", "layer"] = "none"
    """Normalisation after each hidden linear layer."""

    def problems(self) -> list[str]:
        found = []
        if any(size <= 0 for size in self.hidden_sizes):
            found.append(
                f"--model.hidden-sizes is {list(self.hidden_sizes)}; every width must be a "
                "positive integer (e.g. --model.hidden-sizes 256 128)."
            )
        return found + self.not_probability("dropout")

    def build(self, info):
        from torch import nn

        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(info.input_shape)
        for size in self.hidden_sizes:
            layers.append(nn.Linear(width, size))
            if self.norm == "batch":
                layers.append(nn.BatchNorm1d(size))
            elif self.norm == "layer":
                layers.append(nn.LayerNorm(size))
            layers.append(getattr(nn, ACTIVATIONS[self.activation])())
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = size
        layers.append(nn.Linear(width, info.num_outputs))
        return nn.Sequential(*layers)
