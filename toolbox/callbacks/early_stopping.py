"""early_stopping: stop when --monitor stops improving, or when the learning rate is spent."""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.callbacks import Callback, CallbackConfig, register_callback


@register_callback("early_stopping")
@dataclass(frozen=True)
class EarlyStopping(CallbackConfig):
    """Stop the run (finished, resumable with a larger budget) when --monitor has not
    improved for --callback.early-stopping.patience evaluations, or when the learning rate
    fell below --callback.early-stopping.min-lr."""

    patience: int = 5
    """Evaluations without improvement of --monitor before the run stops (0: never)."""
    min_delta: float = 0.0
    """How much --monitor must beat its best by to count as an improvement (>= 0)."""
    min_lr: float = 0.0
    """Stop once the learning rate is below this value (0: never)."""

    def problems(self) -> list[str]:
        found = []
        if self.patience < 0:
            found.append(f"{self.option('patience')} is {self.patience}; give 0 (never) or more.")
        for name in ("min_delta", "min_lr"):
            if not 0 <= getattr(self, name) < math.inf:
                found.append(
                    f"{self.option(name)} is {getattr(self, name)}; it must be finite and >= 0."
                )
        return found

    def build(self) -> EarlyStopper:
        return EarlyStopper(self)


class EarlyStopper(Callback):
    """Counts the evaluations since --monitor last improved by more than min_delta."""

    def __init__(self, options: EarlyStopping) -> None:
        self.options = options
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.evaluations_since_best = 0

    def on_fit_start(self, trainer) -> None:
        # Added to a run that has evaluated before (on --resume): its best so far counts.
        if self.best is None:
            progress = trainer.state.progress
            self.best, self.best_epoch = progress.best_value, progress.best_epoch

    def on_evaluation_end(self, trainer, row, improved) -> None:
        options, config = self.options, trainer.config
        value = row[config.monitor]
        sign = 1.0 if config.monitor_mode == "min" else -1.0
        if math.isfinite(value) and (
            self.best is None or sign * (self.best - value) > options.min_delta
        ):
            self.best, self.best_epoch, self.evaluations_since_best = value, row["epoch"], 0
        else:
            self.evaluations_since_best += 1
        lr = row["lr"]
        if options.patience and self.evaluations_since_best >= options.patience:
            best = "none finite" if self.best is None else f"best {self.best:.4g}"
            trainer.request_stop(
                f"{config.monitor} has not improved for {self.evaluations_since_best} "
                f"evaluations ({best} at epoch {self.best_epoch}; "
                f"--callback.early-stopping.patience {options.patience})"
            )
        elif lr < options.min_lr:
            trainer.request_stop(
                f"the learning rate {lr:.3g} fell below --callback.early-stopping.min-lr "
                f"{options.min_lr:g}"
            )

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "evaluations_since_best": self.evaluations_since_best,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.evaluations_since_best = state["evaluations_since_best"]
