"""Metrics: exact over a whole split. Most are sums and counts accumulated on the device
(``batch_sum``); the others (macro F1, AUROC) keep a torchmetrics state over the split
(``make_state``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from toolbox.component import Component
from toolbox.datasets import Task
from toolbox.registry import Registry

if TYPE_CHECKING:
    import torch
    import torchmetrics


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

    @property
    def is_sum_over_samples(self) -> bool:
        """Whether ``batch_sum`` gives the metric (it keeps no torchmetrics state), so that
        it can be added up batch by batch anywhere, e.g. on the training batches."""
        return type(self).make_state is MetricConfig.make_state

    def make_state(self, num_outputs: int, **options) -> torchmetrics.Metric | None:
        """For a metric that is not a sum over samples: a torchmetrics Metric that the
        evaluation updates with each batch's ``(output, target)`` (the model's float32
        outputs, e.g. logits of ``num_outputs`` classes) and computes once, to a scalar,
        over the whole split. ``options`` are torchmetrics' Metric keyword arguments the
        evaluation sets (``sync_on_compute``: whether to gather the states of all torchrun
        ranks); pass them on. None (the default): the metric is ``batch_sum``'s."""
        return None


METRICS: Registry[MetricConfig] = Registry("metric", __name__, MetricConfig, "--metrics")
register_metric = METRICS.register
