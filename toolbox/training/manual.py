"""Manual optimization: what a model that drives its own optimizers (``configure_optimizers``,
toolbox.models.steps) is given in its training step, and the runner that gives it.

The model calls ``backward(loss, name)`` and ``step(name)`` for each of its optimizers; the
trainer sets the accumulation group before each batch (``start_batch``) and, after the
group's last batch, updates the gradient scaler once (``end_step``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from toolbox.config.training import TrainingConfig
from toolbox.errors import UserError
from toolbox.training.distributed import Distributed
from toolbox.training.events import Events
from toolbox.training.state import RunState, ScheduledOptimizer
from toolbox.training.steps import StepRunner


class ManualOptimization:
    """The context of a training step that steps its model's named optimizers."""

    def __init__(
        self,
        state: RunState,
        config: TrainingConfig,
        dist: Distributed,
        device: torch.device,
        events: Callable[[], Events],
    ) -> None:
        """``events`` gives the trainer's events (whose listeners hear each step)."""
        self.optimizers = state.optimizers
        self.scaler = state.scaler
        self.clip_grad = config.clip_grad
        self.dist = dist
        self.events = events
        autocasting = config.precision != "fp32"
        self.outside_autocast = (
            (lambda: torch.autocast(device.type, enabled=False)) if autocasting else nullcontext
        )
        self.group_size = 1
        self.steps_now = True
        self.stepped: set[str] = set()
        """The optimizers stepped in this training step: each steps once per scaler update."""

    def start_batch(self, group_size: int, steps_now: bool) -> None:
        """The next batch is one of an accumulation group of ``group_size``; the optimizers
        step at its last (``steps_now``)."""
        self.group_size, self.steps_now = group_size, steps_now

    def backward(self, loss: torch.Tensor, name: str) -> None:
        """Backpropagate ``loss`` into the parameters of the optimizer ``name`` only (another
        network's gradients are left as they are, so that its own loss alone steps it),
        scaled for fp16 and by 1 / the accumulation group's size, outside autocast."""
        parameters = self._entry(name).parameters
        loss = loss.float()  # fp16's loss scale overflows in half precision
        if self.group_size > 1:
            loss = loss / self.group_size
        with self.outside_autocast():
            self.scaler.scale(loss).backward(inputs=parameters)

    def step(self, name: str) -> None:
        """At the last batch of an accumulation group (elsewhere nothing): average the
        optimizer ``name``'s gradients over the ranks, unscale and clip them (--clip-grad),
        step it, zero its gradients and step its per-step schedule."""
        entry = self._entry(name)
        if not self.steps_now:
            return
        if name in self.stepped:
            raise UserError(
                f"the training step stepped the optimizer {name!r} twice; each optimizer "
                "steps at most once per training step (the gradient scaler updates between)."
            )
        self.stepped.add(name)
        self.dist.average_gradients_of(entry.parameters)
        events = self.events()
        # Callbacks that read the gradients read them unscaled, as clipping does.
        if self.clip_grad is not None or events.listens_to("before_optimizer_step"):
            self.scaler.unscale_(entry.optimizer)
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(entry.parameters, self.clip_grad)
        events.emit("before_optimizer_step", name)
        self.scaler.step(entry.optimizer)
        entry.optimizer.zero_grad(set_to_none=True)
        if entry.sched.interval == "step":
            entry.scheduler.step()

    def end_step(self) -> None:
        """The training step of an accumulation group's last batch has returned: the
        scaler's one update for all the optimizers it stepped."""
        if self.stepped:  # the scaler refuses an update with no step to learn from
            self.scaler.update()
        self.stepped.clear()

    def _entry(self, name: str) -> ScheduledOptimizer:
        entry = self.optimizers.get(name)
        if entry is None:
            declared = ", ".join(repr(declared) for declared in self.optimizers)
            raise UserError(
                f"the training step named the optimizer {name!r}, but the model declares "
                f"{declared} (configure_optimizers); use one of those names."
            )
        return entry


class ManualStepRunner(StepRunner):
    """A StepRunner whose training step is given the model's ManualOptimization."""

    def __init__(self, steps: torch.nn.Module, optimization: ManualOptimization) -> None:
        super().__init__(steps)
        self.optimization = optimization

    def forward(
        self, batch: dict[str, torch.Tensor], training: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if not training:
            return super().forward(batch, training)
        result = self.model.training_step(batch, self.optimization)
        return result.losses, result.outputs


def training_runner(
    steps: torch.nn.Module,
    state: RunState,
    config: TrainingConfig,
    dist: Distributed,
    device: torch.device,
    events: Callable[[], Events],
) -> tuple[StepRunner, ManualOptimization | None]:
    """The runner of the training steps, and the ManualOptimization it gives them when the
    model drives its own optimizers (None otherwise)."""
    if not state.manual:
        return StepRunner(steps), None
    optimization = ManualOptimization(state, config, dist, device, events)
    return ManualStepRunner(steps, optimization), optimization
