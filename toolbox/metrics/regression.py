from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.metrics import MetricConfig, register_metric


def _error(output, target):
    """``output - target`` in float64, so that the sums over a split (of values maybe near
    1e3 whose errors are near 1e-2) agree with a float64 reference such as scikit-learn's to
    float64 precision. MPS has no float64: there it stays float32 (about 1e-7 relative)."""
    if output.device.type == "mps":
        return output.float() - target.float()
    return output.double() - target.double()


@register_metric("mae")
@dataclass(frozen=True)
class MAE(MetricConfig):
    """Mean absolute error over every predicted value."""

    tasks = ("regression",)
    higher_is_better = False

    def batch_sum(self, output, target):
        return _error(output, target).abs().sum(), target.numel()


@register_metric("rmse")
@dataclass(frozen=True)
class RMSE(MetricConfig):
    """Root of the mean squared error over every predicted value."""

    tasks = ("regression",)
    higher_is_better = False

    def batch_sum(self, output, target):
        return _error(output, target).square().sum(), target.numel()

    def finalize(self, total, count):
        return math.sqrt(total / max(count, 1))
