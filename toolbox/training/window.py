"""The training losses (and --metrics' sums on the training batches) between two host
syncs: kept on the device step by step, read once per --log-every interval (or before a
checkpoint)."""

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
        metric_names: tuple[str, ...] = (),
    ) -> None:
        """``diverged(batch_idx)`` is the error to raise when that batch's main loss is not
        finite on some rank; ``metric_names`` the metrics whose batch sums each step adds."""
        self.loss_names, self.progress = loss_names, progress
        self.reduce, self.diverged = reduce, diverged
        self.metric_names = metric_names
        self.batch_idxs: list[int] = []
        self.samples: list[int] = []
        self.losses: list[torch.Tensor] = []  # loss_names' 0-d tensors, step after step
        self.metric_sums: list[torch.Tensor] = []  # metric_names' sums, step after step
        self.metric_counts: list[int] = []
        self.metric_totals: dict[str, tuple[float, int]] = {}
        """The last window's (sum, count) of each metric, over all ranks."""
        self.started = time.perf_counter()
        """When the current interval began (for the samples/s shown at its end)."""

    def add(
        self,
        batch_idx: int,
        samples: int,
        losses: dict[str, torch.Tensor],
        metric_sums: list[tuple[torch.Tensor, int]] = (),
    ) -> None:
        """A step's losses, and its metrics' (sum, count) when it has them (a model whose
        training step gives no prediction has none)."""
        self.batch_idxs.append(batch_idx)
        self.samples.append(samples)
        for name in self.loss_names:
            self.losses.append(losses[name].detach())
        for total, count in metric_sums:
            self.metric_sums.append(total)
            self.metric_counts.append(count)

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
        reduced = self._reduce(rows)
        totals, count = [0.0] * len(self.loss_names), 0
        for batch_idx, row in zip(self.batch_idxs, reduced, strict=True):
            if not math.isfinite(row[0]):  # the main loss, on any rank: all stop together
                raise self.diverged(batch_idx)
            totals = [total + value for total, value in zip(totals, row[:-1], strict=True)]
            count += round(row[-1])
        self.progress.add_losses(self.loss_names, totals, count)
        self.progress.add_metrics(self.metric_totals)
        self.batch_idxs, self.samples, self.losses = [], [], []
        return totals[0] / count, count

    def _reduce(self, rows: torch.Tensor) -> list[list[float]]:
        """``rows`` summed over the ranks and read (the one host sync), with the metrics'
        sums and counts over the window's steps in the same all-reduce and read (their
        totals go to ``metric_totals``)."""
        width = len(self.metric_names) if self.metric_sums else 0
        flat = rows.flatten()
        if width:
            sums = torch.stack(self.metric_sums).to(rows.dtype).view(-1, width).sum(dim=0)
            counts = torch.tensor(self.metric_counts, dtype=rows.dtype, device=rows.device)
            flat = torch.cat([flat, sums, counts.view(-1, width).sum(dim=0)])
        values = self.reduce(flat).tolist()
        metrics = values[rows.numel() :]
        self.metric_totals = {
            name: (metrics[i], round(metrics[width + i]))
            for i, name in enumerate(self.metric_names[:width])
        }
        self.metric_sums, self.metric_counts = [], []
        row_width = rows.shape[1]
        return [values[start : start + row_width] for start in range(0, rows.numel(), row_width)]
