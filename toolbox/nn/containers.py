"""Containers: a sequential chain with several inputs and outputs, and a residual wrapper."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MultiSequential(nn.Sequential):
    """Like ``nn.Sequential``, but for modules with several inputs and outputs.

    Each module gets the previous module's outputs as positional arguments: a returned tuple
    is unpacked, anything else is passed as one argument. The chain returns what its last
    module returns (its inputs, as a tuple if more than one, when it is empty).
    """

    def forward(self, *inputs: Any) -> Any:
        outputs: Any = inputs[0] if len(inputs) == 1 else inputs
        for module in self:
            outputs = module(*outputs) if isinstance(outputs, tuple) else module(outputs)
        return outputs


class Residual(nn.Module):
    """``module(x) + shortcut(x)``; the shortcut is the identity unless given (e.g. a 1x1 conv
    where ``module`` changes the channels or the size)."""

    def __init__(self, module: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) + self.shortcut(x)
