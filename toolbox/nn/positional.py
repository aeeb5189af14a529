"""Positional encodings for (B, L, dim) sequences, and rotary encoding for attention heads."""

from __future__ import annotations

import torch
from torch import nn

from toolbox.nn._checks import check_positive


def sinusoidal_embedding(
    positions: torch.Tensor, dim: int, base: float = 10000.0, *, interleave: bool = True
) -> torch.Tensor:
    """Sinusoidal features (*positions.shape, dim) in float32 of any positions, integer or not
    (diffusion timesteps, times of events), as "Attention is all you need" encodes indices.

    With ``angle = p / base**(2i / dim)``, feature pair i is (sin(angle), cos(angle)):
    interleaved (sin, cos, sin, cos, ...) by default, or all sines first and then all cosines
    when ``interleave`` is False (the layout of DDPM's timestep embedding).
    """
    if dim % 2:
        raise ValueError(f"a sinusoidal encoding needs an even dim, got {dim}")
    # Angles in float32 even for half-precision inputs: p * frequency loses digits early.
    exponents = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim
    angles = positions.float()[..., None] * base**-exponents  # (*positions.shape, dim / 2)
    if interleave:
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sinusoidal_table(
    length: int,
    dim: int,
    base: float = 10000.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The (length, dim) table of "Attention is all you need": with
    ``angle = p / base**(2i / dim)``, ``table[p, 2i] = sin(angle)`` and
    ``table[p, 2i + 1] = cos(angle)``; :func:`sinusoidal_embedding` of positions 0..length-1.
    """
    positions = torch.arange(length, device=device, dtype=torch.float32)
    table = sinusoidal_embedding(positions, dim, base)
    return table.to(dtype) if dtype is not None else table


def _check_sequence(x: torch.Tensor, dim: int | None, layer: str) -> None:
    if x.ndim != 3 or (dim is not None and x.shape[-1] != dim):
        expected = f"(batch, length, {dim})" if dim is not None else "(batch, length, features)"
        raise ValueError(f"{layer} expects inputs of shape {expected}, got {tuple(x.shape)}")


class _Sinusoidal(nn.Module):
    """A fixed sinusoidal table ``dim`` wide (see :func:`sinusoidal_table`)."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        check_positive("dim", dim)
        if dim % 2:
            raise ValueError(f"dim must be even (sin and cos pairs), got {dim}")
        self.dim = dim
        self.base = base


class SinusoidalPositionalEncoding(_Sinusoidal):
    """Adds the fixed sinusoidal table (see :func:`sinusoidal_table`) to (B, L, dim) inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, self.dim, type(self).__name__)
        return x + sinusoidal_table(x.shape[1], self.dim, self.base, device=x.device, dtype=x.dtype)


class ConcatSinusoidalPositionalEncoding(_Sinusoidal):
    """Appends a ``dim``-wide sinusoidal table to the features: (B, L, F) -> (B, L, F + dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, None, type(self).__name__)
        batch, length, _ = x.shape
        table = sinusoidal_table(length, self.dim, self.base, device=x.device, dtype=x.dtype)
        return torch.cat([x, table.expand(batch, length, self.dim)], dim=-1)


class LearnedPositionalEncoding(nn.Module):
    """Adds a learned vector per position to (B, L, dim) inputs, for L up to ``max_len``."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        check_positive("max_len", max_len)
        check_positive("dim", dim)
        self.embedding = nn.Embedding(max_len, dim)
        # Small, as in GPT-2 and ViT: the default N(0, 1) would swamp typical token embeddings.
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        max_len, dim = self.embedding.weight.shape
        _check_sequence(x, dim, type(self).__name__)
        if x.shape[1] > max_len:
            raise ValueError(
                f"sequence length {x.shape[1]} exceeds this encoding's max_len ({max_len})"
            )
        return x + self.embedding.weight[: x.shape[1]]


class RotaryEmbedding(nn.Module):
    """Rotary position encoding (RoPE, Su et al. 2021) for queries and keys of shape
    (B, heads, L, head_dim).

    Feature pairs (2i, 2i + 1) at position p rotate by the angle ``p / base**(2i / head_dim)``,
    so a query-key dot product depends on their positions only through their difference.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        check_positive("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (features rotate in pairs), got {head_dim}")
        self.head_dim = head_dim
        self.base = base

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., L, head_dim) with each position's feature pairs rotated."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"RotaryEmbedding expects a last dimension of {self.head_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        # The sinusoidal table holds exactly sin and cos of the rotation angles, interleaved.
        table = sinusoidal_table(x.shape[-2], self.head_dim, self.base, device=x.device)
        sin, cos = table[:, 0::2], table[:, 1::2]  # (L, head_dim / 2)
        even, odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each (..., L, head_dim / 2)
        rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
        return rotated.flatten(-2).to(x.dtype)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(query), self.rotate(key)
