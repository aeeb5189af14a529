"""Metrics: exact over a whole split, accumulated on the device as (sum, count) pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from toolbox.component import Component
from toolbox.datasets import Task
from toolbox.registry import Registry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MetricConfig(Component):
    tasks: ClassVar[tuple[Task, ...]] = ("classification", "regression")
    """The dataset tasks this metric applies to."""
    higher_is_better: ClassVar[bool] = True

    def batch_sum(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        """This batch's contribution: a scalar tensor to add up, and how many items it covers.

        Summing over the split and dividing once makes the metric exact, not a mean of
        batch means (which is wrong when the last batch is smaller).
        """
        raise NotImplementedError

    def finalize(self, total: float, count: int) -> float:
        return total / max(count, 1)


METRICS: Registry[MetricConfig] = Registry("metric", __name__, MetricConfig, "--metrics")
register_metric = METRICS.register
