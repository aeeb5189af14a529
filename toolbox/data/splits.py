"""Deterministic hold-out splits of in-memory tensors."""

from __future__ import annotations

import torch


def take(tensors: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: value[index] for key, value in tensors.items()}


def hold_out(
    tensors: dict[str, torch.Tensor], fraction: float, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split off ``fraction`` of the samples, the same ones for the same seed on any machine.

    The permutation comes from a CPU generator of its own, so neither the training seed nor
    the device changes which samples are held out. Returns (rest, held_out).
    """
    rest, held = hold_out_indices(len(next(iter(tensors.values()))), fraction, seed)
    return take(tensors, rest), take(tensors, held)


def hold_out_indices(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample indices ``hold_out`` keeps and holds out, each in ascending order (for
    what travels beside the tensors, such as each sample's file name)."""
    held = round(count * fraction)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    # Sorting each part keeps the samples in their original order within a split.
    return order[held:].sort().values, order[:held].sort().values
