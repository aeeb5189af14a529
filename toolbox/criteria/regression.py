from __future__ import annotations

from dataclasses import dataclass

from toolbox.criteria import CriterionConfig, register_criterion


@register_criterion("mse")
@dataclass(frozen=True)
class MSE(CriterionConfig):
    """Mean squared error between outputs and float targets."""

    tasks = ("regression",)

    def build(self):
        from torch import nn

        return nn.MSELoss()


@register_criterion("l1")
@dataclass(frozen=True)
class L1(CriterionConfig):
    """Mean absolute error between outputs and float targets."""

    tasks = ("regression",)

    def build(self):
        from torch import nn

        return nn.L1Loss()
