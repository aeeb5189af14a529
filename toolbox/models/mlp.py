from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from toolbox.models import ModelConfig, register_model

Activation = Literal["relu", "gelu", "silu", "tanh"]
"""The choices of --model.activation: a subset of toolbox.nn's activation names."""


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
        found = super().problems()
        if any(size <= 0 for size in self.hidden_sizes):
            found.append(
                f"--model.hidden-sizes is {list(self.hidden_sizes)}; every width must be a "
                "positive integer (e.g. --model.hidden-sizes 256 128)."
            )
        return found + self.not_probability("dropout")

    def build(self, info):
        from torch import nn

        from toolbox import nn as blocks  # not `import MLP`: this config class is MLP

        layers = blocks.MLP(
            math.prod(info.input_shape),
            self.hidden_sizes,
            info.num_outputs,
            activation=self.activation,
            dropout=self.dropout,
            norm=self.norm,
        )
        # The block's layers spliced in after the flatten, not nested under it, so that the
        # state_dict keys stay those of earlier mlp checkpoints: 1.weight, 1.bias, ...
        return nn.Sequential(nn.Flatten(), *layers)
