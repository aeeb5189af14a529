"""Shape layers for ``nn.Sequential``, and a layer that prints the shape passing through."""

from __future__ import annotations

import torch
from torch import nn


class Transpose(nn.Module):
    """Swaps dimensions ``dim0`` and ``dim1``, e.g. (B, C, L) <-> (B, L, C) with 1, 2."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0 = dim0
        self.dim1 = dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"{self.dim0}, {self.dim1}"


class Permute(nn.Module):
    """Reorders all dimensions, batch included: ``Permute(0, 2, 3, 1)`` is NCHW -> NHWC."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        if sorted(dims) != list(range(len(dims))):
            raise ValueError(f"dims must be a permutation of 0..{len(dims) - 1}, got {dims}")
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.dims))


class Reshape(nn.Module):
    """Reshapes each example to ``shape``, keeping the batch dimension: (B, ...) -> (B, *shape).

    One entry may be -1, inferred from the others.
    """

    def __init__(self, *shape: int) -> None:
        super().__init__()
        if shape.count(-1) > 1 or any(size < -1 or size == 0 for size in shape):
            raise ValueError(f"shape must hold positive sizes and at most one -1, got {shape}")
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.shape))


class PrintShape(nn.Module):
    """Prints ``label`` and the shapes of its inputs, and returns them unchanged (debugging)."""

    def __init__(self, label: str = "") -> None:
        super().__init__()
        self.label = label

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        print(f"{self.label}: {shapes}" if self.label else shapes)
        return inputs[0] if len(inputs) == 1 else inputs

    def extra_repr(self) -> str:
        return repr(self.label)
