"""Criteria: each registered config builds the loss that training minimises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from toolbox.component import Component
from toolbox.datasets import Task
from toolbox.registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class CriterionConfig(Component):
    option_prefix = "--loss."

    tasks: ClassVar[tuple[Task, ...]] = ("classification", "regression")
    """The dataset tasks this criterion applies to."""

    def build(self) -> nn.Module:
        """A module called as ``criterion(output, target)`` that returns the batch mean."""
        raise NotImplementedError


CRITERIA: Registry[CriterionConfig] = Registry(
    "criterion", __name__, CriterionConfig, "--criterion"
)
register_criterion = CRITERIA.register
