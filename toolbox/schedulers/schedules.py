from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.schedulers import LambdaSchedulerConfig, SchedulerConfig, register_scheduler


def _fraction_problem(option: str, value: float) -> list[str]:
    if not 0.0 <= value <= 1.0:
        return [f"{option} is {value}; it must be in [0, 1] (a fraction of --optim.lr)."]
    return []


@register_scheduler("none")
@dataclass(frozen=True)
class Constant(LambdaSchedulerConfig):
    """A constant learning rate."""

    interval = "never"

    def factor(self, step, steps_per_epoch, total_steps):
        return 1.0


@register_scheduler("step")
@dataclass(frozen=True)
class Step(LambdaSchedulerConfig):
    """Multiply the learning rate by --sched.gamma every --sched.step-epochs epochs."""

    step_epochs: int = 30
    """Epochs between two decays."""
    gamma: float = 0.1
    """Factor applied at each decay."""

    def problems(self) -> list[str]:
        found = self.not_positive("step_epochs")
        if not 0.0 < self.gamma <= 1.0:
            found.append(f"--sched.gamma is {self.gamma}; it must be in (0, 1].")
        return found

    def factor(self, step, steps_per_epoch, total_steps):
        return self.gamma ** (step // (self.step_epochs * steps_per_epoch))


@dataclass(frozen=True)
class _DecayToFraction(LambdaSchedulerConfig):
    final_fraction: float = 0.0
    """Learning rate reached at the end of the run, as a fraction of --optim.lr."""

    def problems(self) -> list[str]:
        return _fraction_problem("--sched.final-fraction", self.final_fraction)

    def shape(self, progress: float) -> float:
        """The decay from 1 at the start (progress 0) to 0 at the end (progress 1)."""
        raise NotImplementedError

    def factor(self, step, steps_per_epoch, total_steps):
        decay = self.shape(min(step / total_steps, 1.0))
        return self.final_fraction + (1.0 - self.final_fraction) * decay


@register_scheduler("linear")
@dataclass(frozen=True)
class Linear(_DecayToFraction):
    """Decay linearly from --optim.lr to --sched.final-fraction of it over the run."""

    def shape(self, progress):
        return 1.0 - progress


@register_scheduler("cosine")
@dataclass(frozen=True)
class Cosine(_DecayToFraction):
    """Cosine decay from --optim.lr to --sched.final-fraction of it over the run."""

    def shape(self, progress):
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@register_scheduler("warmup_cosine")
@dataclass(frozen=True)
class WarmupCosine(Cosine):
    """Linear warm-up to --optim.lr over --sched.warmup-epochs, then cosine decay."""

    warmup_epochs: float = 1.0
    """Length of the warm-up, in epochs (fractions allowed)."""

    def problems(self) -> list[str]:
        found = super().problems()
        if not 0 <= self.warmup_epochs < math.inf:  # inf: no step count to round it to
            found.append(
                f"--sched.warmup-epochs is {self.warmup_epochs}; it must be finite and >= 0 "
                "(e.g. 1, or 0.5 for half an epoch)."
            )
        return found

    def factor(self, step, steps_per_epoch, total_steps):
        warmup_steps = min(round(self.warmup_epochs * steps_per_epoch), total_steps)
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        decay_steps = max(total_steps - warmup_steps, 1)
        return super().factor(step - warmup_steps, steps_per_epoch, decay_steps)


@register_scheduler("plateau")
@dataclass(frozen=True)
class Plateau(SchedulerConfig):
    """Multiply the learning rate by --sched.factor when the monitored metric stalls."""

    interval = "eval"

    factor: float = 0.1
    """Factor applied at each reduction, in (0, 1)."""
    patience: int = 5
    """Evaluations without improvement before a reduction."""
    min_lr: float = 0.0
    """Lower bound of the learning rate."""

    def problems(self) -> list[str]:
        found = []
        if not 0.0 < self.factor < 1.0:
            found.append(f"--sched.factor is {self.factor}; it must be in (0, 1).")
        if not self.patience >= 0:
            found.append(f"--sched.patience is {self.patience}; it must be >= 0.")
        # torch takes any min_lr, silently: inf stops every reduction, nan or a negative
        # value bounds nothing.
        if not 0 <= self.min_lr < math.inf:
            found.append(
                f"--sched.min-lr is {self.min_lr}; it must be finite and >= 0 (0: no bound)."
            )
        return found

    def build(self, optimizer, steps_per_epoch, total_steps, mode):
        import torch

        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=self.factor, patience=self.patience, min_lr=self.min_lr
        )
