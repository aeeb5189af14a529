"""Callbacks: a user's own code at the moments of fit(), chosen with --callbacks NAME ...

A callback is a frozen config registered here (one file adds one, like every other
component), whose options are ``--callback.<name>.*`` and whose ``build()`` returns a
``Callback``: an object whose ``on_<event>`` methods the trainer calls, each with the
trainer first. Hooks a callback does not override cost nothing: with no callbacks the
training step runs exactly as without them.

What a hook may read on the trainer: ``config``, ``model`` (the module trained, not its DDP
or compiled wrapper), ``state`` (``optimizer``, ``scheduler``, ``scaler``, ``progress``
with ``epoch`` and ``step``), ``run_dir``, ``logger`` (training.log and the console),
``device`` and ``dist`` (``rank``, ``world_size``, ``is_main``). What it may do:
``trainer.request_stop(reason)`` ends the run after the current epoch, or after the
current evaluation with --eval-every-steps (finished and resumable, as an early stop), and
``trainer.log_values({"name": value}, step)`` writes scalars to the trackers (TensorBoard,
MLflow, W&B) and training.log.

Hooks run on the writing rank (rank 0) only, unless the callback's class sets
``all_ranks = True`` (it then runs on every rank, e.g. one that takes part in collectives).
A stop asked for on rank 0 is honoured by every rank. ``state_dict()`` is saved in every
checkpoint (rank 0's) and given back to ``load_state_dict`` on --resume, so that a resumed
run's callbacks continue as an uninterrupted run's would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from toolbox.component import Component
from toolbox.registry import Registry

Trainer = Any
"""toolbox.training.trainer.Trainer, which this layer does not import (see the module's
docstring for what a hook may use of it)."""


class Callback:
    """The hooks of fit(), each doing nothing; a callback overrides those it needs."""

    all_ranks: ClassVar[bool] = False
    """Run on every rank under torchrun (False: on the writing rank only)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Training begins, or resumes at ``trainer.state.progress``."""

    def on_epoch_start(self, trainer: Trainer, epoch_idx: int) -> None:
        """Epoch ``epoch_idx`` (0-based) begins."""

    def on_before_optimizer_step(self, trainer: Trainer, name: str) -> None:
        """The optimizer ``name`` is about to step: its gradients are there, unscaled
        (and clipped by --clip-grad). Runs every step: each tensor read is a host sync."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """Optimizer step ``step`` (1-based count) is done. Runs every step."""

    def on_evaluation_end(
        self, trainer: Trainer, row: dict[str, float | int], improved: bool
    ) -> None:
        """An evaluation's metrics.csv row (epoch, step, lr, train_*, val_*, elapsed_s);
        ``improved``: --monitor is the best yet."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """``epoch`` epochs are done, evaluated (when due) and checkpointed."""

    def on_checkpoint(self, trainer: Trainer, name: str, path: Path) -> None:
        """The checkpoint ``name`` was written to ``path``."""

    def on_fit_end(
        self, trainer: Trainer, status: str, reason: str | None, error: str | None
    ) -> None:
        """fit() ends: ``status`` finished, interrupted or failed, with the reason it stopped
        (an early stop, a signal) or the error."""

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint keeps of this callback (plain values or tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what ``state_dict`` returned when the resumed checkpoint was saved."""


@dataclass(frozen=True)
class CallbackConfig(Component):
    """A callback's options; ``build`` makes the callback for one run."""

    def option(self, field_name: str) -> str:
        name = self.registered_name.replace("_", "-")
        return f"--callback.{name}.{field_name.replace('_', '-')}"

    def build(self) -> Callback:
        raise NotImplementedError


CALLBACKS: Registry[CallbackConfig] = Registry("callback", __name__, CallbackConfig, "--callbacks")
register_callback = CALLBACKS.register
