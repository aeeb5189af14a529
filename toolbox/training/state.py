"""The state a checkpoint holds: one object that saves and restores every stateful part of
a run (model, weight average, optimizers, schedulers, grad scaler, loader position,
progress, and each rank's random streams), so that a resumed run continues bit-exactly."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from toolbox.config.plain import from_plain, to_plain
from toolbox.config.training import TrainingConfig
from toolbox.data.augment import BatchAugment
from toolbox.errors import UserError
from toolbox.models.steps import MAIN_LOSS
from toolbox.records import checkpoint
from toolbox.training.averaging import WeightAverage
from toolbox.training.distributed import Distributed
from toolbox.training.runtime import rng_state, set_rng_state

if TYPE_CHECKING:
    from toolbox.optimizers import OptimizerConfig
    from toolbox.schedulers import SchedulerConfig

MAIN_OPTIMIZER = "main"
"""The name of the optimizer of a model that declares none of its own (callbacks hear it)."""


@dataclass
class ScheduledOptimizer:
    """One optimizer of the run, its scheduler, and the configs they were built from."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    optim: OptimizerConfig
    sched: SchedulerConfig
    parameters: list[torch.nn.Parameter]
    """What it trains: what its gradients' averaging and clipping read."""


@dataclass
class Progress:
    """How far the run has come; saved in every checkpoint and restored on resume."""

    epoch: int = 0
    """Completed epochs."""
    step: int = 0
    """Completed optimizer steps."""
    elapsed_s: float = 0.0
    """Wall time spent in fit(), over all sessions of the run."""
    best_value: float | None = None
    """Best value of the monitored metric so far."""
    best_epoch: int | None = None
    train_loss_sums: dict[str, float] = field(default_factory=dict)
    """Each named training loss summed over the samples trained on since the last
    evaluation (whose row gives their means as train_<name>)."""
    train_samples: int = 0
    train_metric_sums: dict[str, list[float]] = field(default_factory=dict)
    """Each --metrics' training [sum, count] since the last evaluation (--train-metrics)."""
    nan_skips: int = 0
    """Batches skipped for a non-finite loss (--nan-policy skip)."""
    lr_scale: float = 1.0
    """The learning-rate factor last read from runtime.json."""
    steps_per_epoch: int = 0
    """Optimizer steps per epoch when saved (it changes with the number of processes)."""

    @classmethod
    def from_saved(cls, saved: dict) -> Progress:
        """The progress a checkpoint holds, from this version or an earlier one."""
        saved = dict(saved)
        if "epoch_loss_sum" in saved:  # before named losses: the main loss alone
            saved["epoch_loss_sums"] = {MAIN_LOSS: saved.pop("epoch_loss_sum")}
        # Before step-based evaluations the sums were the epoch's, and early stopping's
        # count was the progress's (it is the early_stopping callback's own state now).
        if "epoch_loss_sums" in saved:
            saved["train_loss_sums"] = saved.pop("epoch_loss_sums")
            saved["train_samples"] = saved.pop("epoch_samples")
        saved.pop("evals_since_best", None)
        return cls(**saved)

    def add_losses(self, names: tuple[str, ...], totals: list[float], count: int) -> None:
        """Add a window of steps' loss sums (over ``count`` samples) to the interval's."""
        for name, total in zip(names, totals, strict=True):
            self.train_loss_sums[name] = self.train_loss_sums.get(name, 0.0) + total
        self.train_samples += count

    def add_metrics(self, sums: dict[str, tuple[float, int]]) -> None:
        """Add a window of steps' training metric sums and counts to the interval's."""
        for name, (total, count) in sums.items():
            kept = self.train_metric_sums.setdefault(name, [0.0, 0])
            kept[0] += total
            kept[1] += count

    def train_mean_losses(self) -> dict[str, float]:
        samples = max(self.train_samples, 1)
        return {name: total / samples for name, total in self.train_loss_sums.items()}

    def start_train_interval(self) -> None:
        """An evaluation read the training sums: the next row's start from nothing."""
        self.train_loss_sums, self.train_samples, self.train_metric_sums = {}, 0, {}

    def record_evaluation(self, monitored: float, mode: str) -> bool:
        """Count an evaluation of the monitored metric; returns whether it is the best yet
        (a non-finite value never is)."""
        best = self.best_value
        improved = math.isfinite(monitored) and (
            best is None or (monitored < best if mode == "min" else monitored > best)
        )
        if improved:
            self.best_value = monitored
            self.best_epoch = self.epoch
        return improved


class SessionClock:
    """The run's wall time in fit(): the sessions before this one, plus this one's."""

    def __init__(self) -> None:
        self.before = 0.0
        self.started = time.perf_counter()

    def start(self, elapsed_before: float) -> None:
        self.before, self.started = elapsed_before, time.perf_counter()

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.started


class RunState:
    """Every stateful part of a run, and the one place that saves and restores them all.

    Rank 0's random streams are the single-process ones; under torchrun the checkpoint
    holds each rank's too (``ranks``), and a resume with as many processes restores them."""

    def __init__(
        self,
        config: TrainingConfig,
        dist: Distributed,
        *,
        model: torch.nn.Module,
        ema: WeightAverage | None,
        optimizers: dict[str, ScheduledOptimizer],
        manual: bool = False,
        scaler: torch.amp.GradScaler,
        train_loader,
        augment: BatchAugment | None,
        steps_per_epoch: int,
        epochs: int,
        total_steps: int,
        data_info=None,
        pretrained_keys: list[str] = (),
    ) -> None:
        """``data_info`` (the dataset's DatasetInfo) is saved for what uses the trained
        model without its data: toolbox.load_model, prediction, export; ``pretrained_keys``
        (the tensors --model.weights loaded) for a resume's optimizer groups. ``optimizers``
        by name: the run's one (MAIN_OPTIMIZER), or those the model declares and steps
        itself (``manual``, toolbox.models.steps)."""
        self.config, self.dist = config, dist
        self.data_info = data_info
        self.pretrained_keys = list(pretrained_keys)
        self.model, self.ema = model, ema
        self.optimizers, self.manual, self.scaler = optimizers, manual, scaler
        self.train_loader, self.augment = train_loader, augment
        self.steps_per_epoch = steps_per_epoch
        self.epochs, self.total_steps = epochs, total_steps
        """The epochs the run trains for (the last one cut short at --max-steps) and its
        optimizer steps in all."""
        self.progress = Progress(steps_per_epoch=steps_per_epoch)
        self.callbacks: dict = {}
        """The run's callbacks by name (on this rank), whose states checkpoints keep."""

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first optimizer (the only one, unless the model declares several)."""
        return next(iter(self.optimizers.values())).optimizer

    @property
    def scheduler(self):
        """The first optimizer's scheduler."""
        return next(iter(self.optimizers.values())).scheduler

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def lr_columns(self) -> dict[str, float]:
        """The learning rates an evaluation row holds: the first optimizer's as ``lr``, and
        with several optimizers each one's as ``lr_<name>`` too."""
        columns = {"lr": self.lr}
        if len(self.optimizers) > 1:
            for name, entry in self.optimizers.items():
                columns[f"lr_{name}"] = entry.optimizer.param_groups[0]["lr"]
        return columns

    def step_eval_schedulers(self, monitored: float) -> None:
        """Step the schedulers that follow the evaluations with the monitored metric."""
        for entry in self.optimizers.values():
            if entry.sched.interval == "eval":
                entry.scheduler.step(monitored)

    # --- saving --------------------------------------------------------------------------

    def weights_finite(self) -> bool:
        """Whether every parameter and buffer (and their average) is finite: one fused
        max-norm kernel per dtype and one host sync, a small cost beside a checkpoint."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        if self.ema is not None:
            tensors += [t for t in self.ema.module.state_dict().values() if t.is_floating_point()]
        if not tensors:
            return True
        norms = torch._foreach_norm(tensors, float("inf"))  # NaN and inf propagate
        return bool(torch.stack([norm.float() for norm in norms]).isfinite().all())

    def save(self, path: Path, run_id: str | None) -> None:
        """All ranks call it at the same step; rank 0 writes ``path``, and the others go on
        once the file is complete (or all fail together)."""
        ranks = self.dist.gather_to_main(self._rank_state())
        self.dist.run_on_main(lambda: self._write(path, self._state_dict(ranks, run_id)))

    def keep_epoch_copy(self, run_dir: Path) -> None:
        """The per-epoch copy of the last checkpoint that --keep-last and --save-at ask for
        (rank 0, which wrote it), and the pruning of older ones."""
        config, epoch = self.config, self.progress.epoch
        if self.dist.is_main and (config.keep_last > 0 or epoch in config.save_at):
            checkpoint.keep_copy(run_dir, checkpoint.LAST, checkpoint.per_epoch_name(epoch))
            checkpoint.prune_per_epoch(run_dir, config.keep_last, config.save_at)

    def _rank_state(self) -> dict:
        """What differs between ranks: their random streams."""
        return {
            "rng": rng_state(),
            "augment": self.augment.state_dict() if self.augment is not None else None,
        }

    def _state_dict(self, ranks: list[dict], run_id: str | None) -> dict:
        # The first optimizer's states, saved once: the named entry and "optimizer" (which
        # every checkpoint has, and single-optimizer readers read) are the same objects.
        named = {
            name: {
                "optimizer": entry.optimizer.state_dict(),
                "scheduler": entry.scheduler.state_dict(),
                "lr": entry.optim.lr,
            }
            for name, entry in self.optimizers.items()
        }
        first = next(iter(named.values()))
        return {
            "format": checkpoint.FORMAT,
            "run_id": run_id,
            "config": to_plain(self.config),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": first["optimizer"],
            "scheduler": first["scheduler"],
            "named_optimizers": named if self.manual else None,
            "scaler": self.scaler.state_dict(),
            "loader": self.train_loader.state_dict(),
            # Rank 0's streams, which a single process resumes with; all ranks' under torchrun.
            **ranks[0],
            "ranks": ranks if len(ranks) > 1 else None,
            "progress": dataclasses.asdict(self.progress),
            "data_info": dataclasses.asdict(self.data_info) if self.data_info else None,
            "pretrained_keys": self.pretrained_keys,
            "callbacks": {name: callback.state_dict() for name, callback in self.callbacks.items()},
        }

    @staticmethod
    def _write(path: Path, state: dict) -> None:
        try:
            checkpoint.save_atomic(state, path)
        except OSError as error:
            raise UserError(
                f"could not write {path} ({error}); the previous checkpoint is intact. Free "
                "space or fix permissions, then resume from it."
            ) from error

    # --- restoring -----------------------------------------------------------------------

    def restore(self, saved: dict) -> list[str]:
        """Continue from the checkpoint ``saved`` (--resume); returns notes for the log."""
        resume = f"--resume {self.config.resume}"
        checkpoint.load_model_state(self.model, saved["model"], resume, strict=True)
        if self.ema is not None:
            checkpoint.load_model_state(
                self.ema.module,
                saved.get("ema") or {},
                f"{resume} (its --ema-decay average)",
                strict=True,
            )
        saved_optimizers = self._saved_optimizers(saved, resume)
        for name, entry in self.optimizers.items():
            # Loading the states brings back the saved hyper-parameters too; the ones given
            # now (--optim.*, --sched.*, the model's) must win, e.g. a lower --optim.lr
            # after a divergence.
            chosen = [
                {key: value for key, value in group.items() if key != "params"}
                for group in entry.optimizer.param_groups
            ]
            states = saved_optimizers[name]
            entry.optimizer.load_state_dict(states["optimizer"])
            entry.scheduler.load_state_dict(states["scheduler"])
            self._apply_hyperparameters(entry, chosen, entry.optim.lr / states["lr"])
        if saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        self.train_loader.load_state_dict(saved["loader"])
        self.progress = Progress.from_saved(saved["progress"])
        notes = self._restore_random_streams(saved)
        if self.progress.steps_per_epoch not in (0, self.steps_per_epoch):
            notes += self._move_schedule_to(
                self.progress.epoch * self.steps_per_epoch
                + self.train_loader.resume_batch // self.config.grad_accum
            )
        self.progress.steps_per_epoch = self.steps_per_epoch
        if self.config.max_steps and self.progress.step >= self.total_steps:
            raise UserError(
                f"{resume}: the run has already trained {self.progress.step} of --max-steps "
                f"{self.total_steps}; pass a larger --max-steps (e.g. --max-steps "
                f"{self.progress.step * 2}) to train further."
            )
        if not self.config.max_steps and self.progress.epoch >= self.epochs:
            raise UserError(
                f"{resume}: the run has already trained {self.progress.epoch} of --epochs "
                f"{self.epochs}; pass a larger --epochs (e.g. --epochs "
                f"{self.progress.epoch + 10}) to train further."
            )
        return notes

    def _saved_optimizers(self, saved: dict, resume: str) -> dict[str, dict]:
        """Each optimizer's saved states and peak rate, by name; a checkpoint of the run's
        one optimizer (of any version) holds its states as "optimizer" and "scheduler"."""
        named = saved.get("named_optimizers")
        if not self.manual and not named:
            lr = from_plain(saved["config"]).optim.lr
            states = {"optimizer": saved["optimizer"], "scheduler": saved["scheduler"], "lr": lr}
            return {MAIN_OPTIMIZER: states}
        if not named or list(named) != list(self.optimizers):
            kept = ", ".join(named) if named else "the run's one optimizer (--optim)"
            raise UserError(
                f"{resume}: the checkpoint holds the states of {kept}, but the model now "
                f"trains with {', '.join(self.optimizers)}; resume with the code that saved "
                "it, or start a new run (--init-from loads its weights)."
            )
        return named

    def restore_callbacks(self, saved: dict) -> None:
        """The callbacks continue from the states the checkpoint ``saved`` keeps (one added
        since starts afresh)."""
        states = saved.get("callbacks") or {}
        for name, callback in self.callbacks.items():
            if name in states:
                callback.load_state_dict(states[name])

    def _restore_random_streams(self, saved: dict) -> list[str]:
        ranks = saved.get("ranks") or [{"rng": saved["rng"], "augment": saved.get("augment")}]
        if len(ranks) != self.dist.world_size:
            # Another number of processes: the random streams cannot continue as they were;
            # each rank keeps its fresh seeding (see the README's "Scaling out").
            return [
                f"resumed with {self.dist.world_size} processes, saved with {len(ranks)}: the "
                "epoch goes on from the first unseen sample, with fresh random streams"
            ]
        own = ranks[self.dist.rank]
        if self.augment is not None and own["augment"]:
            self.augment.load_state_dict(own["augment"])
        set_rng_state(own["rng"])
        return []

    def _move_schedule_to(self, step: int) -> list[str]:
        """Sets a per-step schedule to ``step``: after a resume with other steps per epoch,
        it goes on from the same fraction of the run."""
        stepped = [entry for entry in self.optimizers.values() if entry.sched.interval == "step"]
        if not stepped:
            return []
        for entry in stepped:
            entry.scheduler.last_epoch = step
            for group, base_lr, factor in zip(
                entry.optimizer.param_groups,
                entry.scheduler.base_lrs,
                entry.scheduler.lr_lambdas,
                strict=True,
            ):
                group["lr"] = base_lr * factor(step)
        return [
            f"{self.progress.steps_per_epoch} optimizer steps per epoch when saved, "
            f"{self.steps_per_epoch} now: the schedule goes on from step {step}"
        ]

    @staticmethod
    def _apply_hyperparameters(
        entry: ScheduledOptimizer, chosen: list[dict], lr_ratio: float
    ) -> None:
        for group, fresh in zip(entry.optimizer.param_groups, chosen, strict=True):
            for key, value in fresh.items():
                if key not in ("lr", "initial_lr"):
                    group[key] = value
        _scale_lr(entry, lr_ratio)
        for name in ("factor", "patience"):  # ReduceLROnPlateau keeps these in its state
            if hasattr(entry.scheduler, name) and hasattr(entry.sched, name):
                setattr(entry.scheduler, name, getattr(entry.sched, name))

    # --- changes while training ----------------------------------------------------------

    def scale_lr(self, ratio: float) -> None:
        """Multiply every optimizer's learning rate now and everything its schedule derives
        it from."""
        for entry in self.optimizers.values():
            _scale_lr(entry, ratio)

    def set_lr_scale(self, scale: float) -> None:
        """runtime.json's factor: the learning rate moves by its ratio to the last one."""
        self.scale_lr(scale / self.progress.lr_scale)
        self.progress.lr_scale = float(scale)


def _scale_lr(entry: ScheduledOptimizer, ratio: float) -> None:
    if ratio == 1.0:
        return
    for group in entry.optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if hasattr(entry.scheduler, "base_lrs"):
        entry.scheduler.base_lrs = [lr * ratio for lr in entry.scheduler.base_lrs]
