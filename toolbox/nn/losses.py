"""Losses over masked elements, padded sequences, and the root mean squared error."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from toolbox.nn._checks import check_choice

ElementwiseLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ElementwiseLossName = Literal["mse", "l1", "smooth_l1", "huber"]

ELEMENTWISE_LOSSES: dict[str, ElementwiseLoss] = {
    "mse": partial(F.mse_loss, reduction="none"),
    "l1": partial(F.l1_loss, reduction="none"),
    "smooth_l1": partial(F.smooth_l1_loss, reduction="none"),
    "huber": partial(F.huber_loss, reduction="none"),
}


def _elementwise_loss(loss: ElementwiseLossName | ElementwiseLoss) -> ElementwiseLoss:
    if callable(loss):
        return loss
    check_choice("loss", loss, ELEMENTWISE_LOSSES)
    return ELEMENTWISE_LOSSES[loss]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` is True, or 0 (still on the graph) where none is."""
    total = torch.where(mask, values, 0).sum()
    return total / mask.expand(values.shape).sum().clamp(min=1)


class MaskedLoss(nn.Module):
    """An elementwise loss averaged over the elements where ``mask`` is True.

    ``loss`` is a name or a function of (input, target) giving elementwise losses. ``mask`` is
    bool and broadcasts to the input's shape, e.g. (B, L, 1) for (B, L, D). Elements where it
    is False never reach the loss, so they may hold NaN (missing targets). With no True element
    the loss is 0, still on the graph, so backward gives zero gradients.
    """

    def __init__(self, loss: ElementwiseLossName | ElementwiseLoss = "mse") -> None:
        super().__init__()
        self.loss = _elementwise_loss(loss)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
        try:
            broadcasts = torch.broadcast_shapes(mask.shape, input.shape) == input.shape
        except RuntimeError:
            broadcasts = False
        if not broadcasts:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the input's shape "
                f"{tuple(input.shape)}; add size-1 dims, e.g. mask[..., None]"
            )
        # Zeros in place of masked-out values: torch.where passes no gradient to the values it
        # drops, so a NaN there stays out of the loss and the gradients.
        losses = self.loss(torch.where(mask, input, 0), torch.where(mask, target, 0))
        return _masked_mean(losses, mask)


class SequenceLoss(nn.Module):
    """A per-time-step loss over padded (B, T, ...) batches, averaged over valid steps only.

    ``lengths`` (B,) counts each sequence's valid steps, which come first. The result equals
    the loss of every valid step of every sequence, summed, divided by the number of valid
    steps: padding never counts, and long sequences weigh more than short ones. The
    elementwise losses average over the features of each step; ``"cross_entropy"`` takes
    (B, T, classes) logits and (B, T) class indices; a function of (input, target) must
    return per-step losses (B, T). A batch with no valid step gives 0, still on the graph.
    """

    def __init__(
        self, loss: ElementwiseLossName | Literal["cross_entropy"] | ElementwiseLoss = "mse"
    ) -> None:
        super().__init__()
        if loss == "cross_entropy":
            self.step_loss = self._cross_entropy
        elif callable(loss):
            self.step_loss = loss
        else:
            check_choice("loss", loss, [*ELEMENTWISE_LOSSES, "cross_entropy"])
            self.step_loss = partial(self._feature_mean, ELEMENTWISE_LOSSES[loss])

    @staticmethod
    def _feature_mean(
        loss: ElementwiseLoss, input: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        losses = loss(input, target)
        return losses.flatten(2).mean(dim=2) if losses.ndim > 2 else losses

    @staticmethod
    def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # cross_entropy wants the classes in dim 1: (B, T, classes) -> (B, classes, T).
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none")

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        if input.ndim < 2 or target.shape[:2] != input.shape[:2]:
            raise ValueError(
                f"input and target must start with (batch, time), got shapes "
                f"{tuple(input.shape)} and {tuple(target.shape)}"
            )
        batch, steps = input.shape[:2]
        if lengths.shape != (batch,) or lengths.is_floating_point():
            raise ValueError(
                f"lengths must be an integer tensor of shape ({batch},), got {lengths.dtype} "
                f"of shape {tuple(lengths.shape)}"
            )
        if ((lengths < 0) | (lengths > steps)).any():
            raise ValueError(f"lengths must lie in [0, {steps}], got {lengths.tolist()}")
        valid = torch.arange(steps, device=input.device) < lengths.to(input.device)[:, None]

        def keep_valid(x: torch.Tensor) -> torch.Tensor:
            # Zeros at padded steps (see MaskedLoss); for class indices 0 is a valid class.
            return torch.where(valid.reshape(batch, steps, *[1] * (x.ndim - 2)), x, 0)

        losses = self.step_loss(keep_valid(input), keep_valid(target))
        if losses.shape != (batch, steps):
            raise ValueError(
                f"the per-step loss must return shape (batch, time) = {(batch, steps)}, "
                f"got {tuple(losses.shape)}"
            )
        return _masked_mean(losses, valid)


class RMSELoss(nn.Module):
    """The root mean squared error, ``sqrt(mean((input - target)**2) + eps)``.

    ``eps`` keeps the gradient finite at zero error; it raises the loss by at most
    ``sqrt(eps)`` (1e-4 for the default).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(F.mse_loss(input, target) + self.eps)
