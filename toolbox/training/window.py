"""The training losses between two host syncs: kept on the device step by step, read once
per --log-every interval (or before a checkpoint)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from toolbox.training.state import Progress


class LossWindow:
    """The named losses of the steps since the last read, as device scalars: keeping them
    costs no kernel, and reading them all at once finds any non-finite one.

    Every rank reads its window at the same steps, with windows of the same steps, since
    the read is an all-reduce under torchrun."""

    def __init__(
        self,
        loss_names: tuple[str, ...],
        progress: Progress,
        reduce: Callable[[torch.Tensor], torch.Tensor],
        diverged: Callable[[int], Exception],
    ) -> None:
        """``diverged(batch_idx)`` is the error to raise when that batch's main loss is not
        finite on some rank."""
        self.loss_names, self.progress = loss_names, progress
        self.reduce, self.diverged = reduce, diverged
        self.batch_idxs: list[int] = []
        self.samples: list[int] = []
        self.losses: list[torch.Tensor] = []  # loss_names' 0-d tensors, step after step
        self.started = time.perf_counter()
        """When the current interval began (for the samples/s shown at its end)."""

    def add(self, batch_idx: int, samples: int, losses: dict[str, torch.Tensor]) -> None:
        self.batch_idxs.append(batch_idx)
        self.samples.append(samples)
        for name in self.loss_names:
            self.losses.append(losses[name].detach())

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def flush(self) -> tuple[float, int]:
        """Read the window (the one host sync), summed over all ranks, and add it to the
        epoch's sums; returns the window's mean main loss and its number of samples."""
        if not self.batch_idxs:
            return float("nan"), 0
        # One row per step: its named losses times its samples, then its samples.
        losses = torch.stack(self.losses).float().view(len(self.samples), len(self.loss_names))
        samples = torch.tensor(self.samples, dtype=losses.dtype, device=losses.device)
        rows = torch.cat([losses * samples[:, None], samples[:, None]], dim=1)
        reduced = self.reduce(rows).tolist()
        totals, count = [0.0] * len(self.loss_names), 0
        for batch_idx, row in zip(self.batch_idxs, reduced, strict=True):
            if not math.isfinite(row[0]):  # the main loss, on any rank: all stop together
                raise self.diverged(batch_idx)
            totals = [total + value for total, value in zip(totals, row[:-1], strict=True)]
            count += round(row[-1])
        self.progress.add_losses(self.loss_names, totals, count)
        self.batch_idxs, self.samples, self.losses = [], [], []
        return totals[0] / count, count
