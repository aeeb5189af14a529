"""Learning-rate schedulers, stepped once per optimizer step or once per evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from toolbox.component import Component
from toolbox.registry import Registry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SchedulerConfig(Component):
    option_prefix = "--sched."

    interval: ClassVar[Literal["step", "eval", "never"]] = "step"
    """When the trainer steps it: after each optimizer step, after each evaluation (with the
    monitored metric), or never (a constant rate: stepping would only cost time)."""

    def build(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int, mode: str
    ) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
        """``total_steps``: the optimizer steps of the whole run (--epochs times the steps
        per epoch, or --max-steps); ``mode`` is "min" or "max", the direction of the
        monitored metric."""
        raise NotImplementedError


@dataclass(frozen=True)
class LambdaSchedulerConfig(SchedulerConfig):
    """A schedule given as a factor of the peak learning rate at each optimizer step."""

    def factor(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        raise NotImplementedError

    def build(self, optimizer, steps_per_epoch, total_steps, mode):
        import torch

        total_steps = max(total_steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.factor(step, steps_per_epoch, total_steps)
        )


SCHEDULERS: Registry[SchedulerConfig] = Registry(
    "scheduler", __name__, SchedulerConfig, "--scheduler"
)
register_scheduler = SCHEDULERS.register
