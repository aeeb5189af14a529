"""Squeeze-and-excitation (Hu et al. 2018): channels rescaled by gates from their global mean."""

from __future__ import annotations

import torch
from torch import nn

from toolbox.nn._checks import check_positive
from toolbox.nn.activations import ActivationName, make_activation


class _SqueezeExcitation(nn.Module):
    """The body of SqueezeExcitation1d and 2d; ``dims`` is the number of spatial dims."""

    dims: int

    def __init__(
        self, channels: int, reduction: int = 16, activation: ActivationName = "relu"
    ) -> None:
        super().__init__()
        check_positive("channels", channels)
        check_positive("reduction", reduction)
        self.channels = channels
        hidden = max(1, channels // reduction)
        self.reduce = nn.Linear(channels, hidden)
        self.act = make_activation(activation)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 + self.dims or x.shape[1] != self.channels:
            spatial = "length" if self.dims == 1 else "height, width"
            raise ValueError(
                f"{type(self).__name__} expects (batch, {self.channels}, {spatial}), "
                f"got {tuple(x.shape)}"
            )
        pooled = x.mean(dim=tuple(range(2, x.ndim)))  # (B, C)
        gates = torch.sigmoid(self.expand(self.act(self.reduce(pooled))))
        return x * gates.reshape(*gates.shape, *[1] * self.dims)


class SqueezeExcitation1d(_SqueezeExcitation):
    """Squeeze-and-excitation over (B, C, L); the bottleneck has channels // reduction units."""

    dims = 1


class SqueezeExcitation2d(_SqueezeExcitation):
    """Squeeze-and-excitation over (B, C, H, W); the bottleneck has channels // reduction units
    (at least 1)."""

    dims = 2
