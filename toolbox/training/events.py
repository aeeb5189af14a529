"""What the trainer tells the parts that listen to it (the recorder, a search's pruner, and
the user's callbacks, toolbox.callbacks): an event per moment of fit(), each a method a
listener may override.

A listener's hooks run on every rank, in the order the listeners were subscribed; a
callback's are given the trainer first. Events nobody overrides cost one dictionary lookup:
the per-step ones are free until used."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from toolbox.callbacks import Callback

EVENTS = (
    "fit_start",
    "epoch_start",
    "before_optimizer_step",
    "step_end",
    "evaluation_end",
    "epoch_end",
    "checkpoint",
    "fit_end",
)


class Listener:
    """The hooks of fit(), each doing nothing; a listener overrides those it needs."""

    def on_fit_start(self) -> None:
        """Training begins (or resumes at the state's progress)."""

    def on_epoch_start(self, epoch_idx: int) -> None:
        """Epoch ``epoch_idx`` (0-based) begins, after runtime.json was read."""

    def on_before_optimizer_step(self, name: str) -> None:
        """The optimizer ``name`` is about to step, its gradients unscaled and clipped."""

    def on_step_end(self, step: int) -> None:
        """Optimizer step number ``step`` (1-based count) is done. Runs every step: read
        no tensor here (each read is a host sync)."""

    def on_evaluation_end(self, row: dict[str, float | int], improved: bool) -> None:
        """An evaluation's metrics.csv row (epoch, step, lr, train_*, val_*, ...,
        elapsed_s); ``improved``: the monitored metric is the best yet."""

    def on_epoch_end(self, epoch: int) -> None:
        """``epoch`` epochs are done, evaluated (when due) and checkpointed."""

    def on_checkpoint(self, name: str, path: Path) -> None:
        """The checkpoint ``name`` was written to ``path`` (by rank 0; all ranks hear it)."""

    def on_fit_end(self, status: str, reason: str | None, error: str | None) -> None:
        """fit() ends: ``status`` finished, interrupted or failed, with the reason it stopped
        (an early stop, a signal) or the error."""


class Events:
    """Sends each event to the listeners that override its hook."""

    def __init__(self, listeners: tuple[Listener, ...] = ()) -> None:
        self._handlers: dict[str, list[Callable[..., None]]] = {event: [] for event in EVENTS}
        for listener in listeners:
            self.subscribe(listener)

    def subscribe(self, listener: Listener) -> None:
        for event in EVENTS:
            name = f"on_{event}"
            if getattr(type(listener), name) is not getattr(Listener, name):
                self._handlers[event].append(getattr(listener, name))

    def subscribe_callback(self, callback: Callback, trainer: object) -> None:
        """A user's callback: its overridden hooks, called with ``trainer`` first."""
        for event in EVENTS:
            name = f"on_{event}"
            if getattr(type(callback), name) is not getattr(Callback, name):
                self._handlers[event].append(partial(getattr(callback, name), trainer))

    def listens_to(self, event: str) -> bool:
        """Whether anyone hears ``event`` (so that the trainer prepares it only then)."""
        return bool(self._handlers[event])

    def emit(self, event: str, *args) -> None:
        for handler in self._handlers[event]:
            handler(*args)
