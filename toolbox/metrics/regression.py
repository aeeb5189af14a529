from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.metrics import MetricConfig, register_metric


@register_metric("mae")
@dataclass(frozen=True)
class MAE(MetricConfig):
    """Mean absolute error over every predicted value."""

    tasks = ("regression",)
    higher_is_better = False

    def batch_sum(self, output, target):
        return (output.float() - target).abs().sum(), target.numel()


@register_metric("rmse")
@dataclass(frozen=True)
class RMSE(MetricConfig):
    """Root of the mean squared error over every predicted value."""

    tasks = ("regression",)
    higher_is_better = False

    def batch_sum(self, output, target):
        return (output.float() - target).square().sum(), target.numel()

    def finalize(self, total, count):
        return math.sqrt(total / max(count, 1))
