"""What a run is besides its arithmetic: its state in checkpoints, resuming it, its records,
and stopping it (signals, divergence, early stopping, runtime.json)."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from dataclasses import dataclass, field

import torch

from toolbox.config.plain import from_plain, to_plain
from toolbox.errors import DivergenceError, LostContactError, RunStopped, UserError
from toolbox.models.steps import MAIN_LOSS
from toolbox.records import checkpoint, curves, tensorboard
from toolbox.records.atomic import write_json
from toolbox.records.environment import environment
from toolbox.records.layout import ENV, RUNTIME
from toolbox.records.log import describe_run, save_config
from toolbox.records.run_record import RunRecord
from toolbox.training.runtime import rng_state, set_rng_state


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
    epoch_loss_sums: dict[str, float] = field(default_factory=dict)
    """Each named training loss summed over the samples of the current epoch seen so far."""
    epoch_samples: int = 0
    nan_skips: int = 0
    """Batches skipped for a non-finite loss (--nan-policy skip)."""
    evals_since_best: int = 0
    """Evaluations since the monitored metric last improved (for --early-stop-patience)."""
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
        return cls(**saved)


# The learning-rate factors runtime.json may set: beyond them a "factor" is a typo (or an
# overflow) that would wreck the run rather than steer it.
LR_SCALE_RANGE = (1e-6, 1e3)


class RunControl:
    """Mixed into Trainer, whose attributes (config, model, optimizer, scheduler, scaler,
    loaders, progress, run_dir, logger, ...) these methods use."""

    # --- set-up and records --------------------------------------------------------------

    def _restore(self, state: dict) -> None:
        checkpoint.load_model_state(
            self.model, state["model"], f"--resume {self.config.resume}", strict=True
        )
        # Loading the states brings back the saved hyper-parameters too; the ones given now
        # (--optim.*, --sched.*) must win, e.g. a lower --optim.lr after a divergence.
        chosen = [
            {key: value for key, value in group.items() if key != "params"}
            for group in self.optimizer.param_groups
        ]
        if self.ema is not None:
            checkpoint.load_model_state(
                self.ema.module,
                state.get("ema") or {},
                f"--resume {self.config.resume} (its --ema-decay average)",
                strict=True,
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        saved_lr = from_plain(state["config"]).optim.lr
        self._apply_hyperparameters(chosen, self.config.optim.lr / saved_lr)
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.train_loader.load_state_dict(state["loader"])
        self.progress = Progress.from_saved(state["progress"])
        ranks = state.get("ranks") or [{"rng": state["rng"], "augment": state.get("augment")}]
        if len(ranks) == self.dist.world_size:
            own = ranks[self.dist.rank]
            if self.augment is not None and own["augment"]:
                self.augment.load_state_dict(own["augment"])
            set_rng_state(own["rng"])
        else:
            # Another number of processes: the random streams cannot continue as they were;
            # each rank keeps its fresh seeding (see the README's "Scaling out").
            self.resume_notes.append(
                f"resumed with {self.dist.world_size} processes, saved with {len(ranks)}: the "
                "epoch goes on from the first unseen sample, with fresh random streams"
            )
        if self.progress.steps_per_epoch not in (0, self.steps_per_epoch):
            self._move_schedule_to(
                self.progress.epoch * self.steps_per_epoch
                + self.train_loader.resume_batch // self.config.grad_accum
            )
        self.progress.steps_per_epoch = self.steps_per_epoch

    def _move_schedule_to(self, step: int) -> None:
        """Sets a per-step schedule to ``step``: after a resume with other steps per epoch,
        it goes on from the same fraction of the run."""
        if self.config.sched.interval != "step":
            return
        self.scheduler.last_epoch = step
        for group, base_lr, factor in zip(
            self.optimizer.param_groups,
            self.scheduler.base_lrs,
            self.scheduler.lr_lambdas,
            strict=True,
        ):
            group["lr"] = base_lr * factor(step)
        self.resume_notes.append(
            f"{self.progress.steps_per_epoch} optimizer steps per epoch when saved, "
            f"{self.steps_per_epoch} now: the schedule goes on from step {step}"
        )

    def _apply_hyperparameters(self, chosen: list[dict], lr_ratio: float) -> None:
        for group, fresh in zip(self.optimizer.param_groups, chosen, strict=True):
            for key, value in fresh.items():
                if key not in ("lr", "initial_lr"):
                    group[key] = value
        self._scale_lr(lr_ratio)
        sched = self.config.sched
        for name in ("factor", "patience"):  # ReduceLROnPlateau keeps these in its state
            if hasattr(self.scheduler, name) and hasattr(sched, name):
                setattr(self.scheduler, name, getattr(sched, name))

    def _scale_lr(self, ratio: float) -> None:
        """Multiply the learning rate now and everything the schedule derives it from."""
        if ratio == 1.0:
            return
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * ratio for lr in self.scheduler.base_lrs]

    def _read_runtime(self) -> None:
        """Apply an edited runtime.json (read at each epoch's start, by rank 0 for all); a bad
        edit is logged and ignored rather than ending a long run."""
        scale = self.dist.run_on_main(self._read_lr_scale)
        if scale is not None and scale != self.progress.lr_scale:
            self.logger.info(
                "runtime.json: lr_scale %g -> %g from epoch %d",
                self.progress.lr_scale,
                scale,
                self.progress.epoch + 1,
            )
            self._scale_lr(scale / self.progress.lr_scale)
            self.progress.lr_scale = float(scale)

    def _read_lr_scale(self) -> float | None:
        path = self.run_dir / RUNTIME
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as error:
            self.logger.info("runtime.json ignored: %s", error)
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or "lr_scale" not in data:
                raise ValueError('it must be a JSON object such as {"lr_scale": 1.0}')
            scale = data["lr_scale"]
            low, high = LR_SCALE_RANGE
            # JSON's NaN, Infinity and 1e400 parse as floats; none may reach the optimizer.
            number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
            if not (number and low < scale <= high):
                raise ValueError(
                    f"lr_scale is {scale!r}; it must be a number in ({low:g}, {high:g}]"
                )
        except ValueError as error:
            if text != self._ignored_runtime:  # said once per edit, not every epoch
                self.logger.info("runtime.json ignored: %s", error)
                self._ignored_runtime = text
            return None
        return float(scale)

    def _write_records(self, resumed: bool) -> None:
        config = self.config
        save_config(self.run_dir, config)
        env = environment(self.device)
        self.record = RunRecord(self.run_dir)
        self.record.start(config, self.command, env["git"])
        if not (self.run_dir / RUNTIME).exists():
            write_json(self.run_dir / RUNTIME, {"lr_scale": self.progress.lr_scale})
        info = self.splits.info
        if not (self.run_dir / ENV).exists():
            write_json(self.run_dir / ENV, env)
        describe_run(
            self.logger,
            self.run_dir,
            config,
            self.model,
            self.splits,
            env,
            resumed_at=(self.progress.epoch, self.train_loader.next_batch, len(self.train_loader))
            if resumed
            else None,
            skipped_init_keys=self.skipped_init_keys,
        )
        if resumed:
            for stale in checkpoint.remove_stale_temporaries(self.run_dir):
                self.logger.info("removed %s, left by an interrupted write", stale.name)
            # Rows and points written after the checkpoint was taken would be repeated.
            self.table.drop_rows_after(self.progress.step)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops points a crashed session logged after its last checkpoint.
        self.writer = SummaryWriter(
            str(self.run_dir), purge_step=self.progress.step if resumed else None
        )
        self.plotter = curves.CurvesPlotter(
            self.table.path,
            self.run_dir / curves.CURVES,
            title=self.run_dir.name,
            higher_is_better={name: m.higher_is_better for name, m in self.metrics.items()},
        )
        if not resumed and len(info.input_shape) == 3:
            tensorboard.log_sample_grid(
                self.writer, self.splits.train["input"][:64], info.mean, info.std, step=0
            )
        self.last_values: dict[str, float] = {}

    def _rank_state(self) -> dict:
        """What differs between ranks: their random streams."""
        return {
            "rng": rng_state(),
            "augment": self.augment.state_dict() if self.augment is not None else None,
        }

    def _state(self, ranks: list[dict]) -> dict:
        return {
            "format": checkpoint.FORMAT,
            "run_id": self.record.run_id,
            "config": to_plain(self.config),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.train_loader.state_dict(),
            # Rank 0's streams, which a single process resumes with; all ranks' under torchrun.
            **ranks[0],
            "ranks": ranks if len(ranks) > 1 else None,
            "progress": dataclasses.asdict(self.progress),
        }

    def _save(self, name: str) -> None:
        """All ranks call it at the same step; rank 0 writes, and the others go on once the
        file is complete (or all fail together). Weights that are no longer finite are never
        written: a step can overflow them while its loss, computed before, was finite."""
        if not self._weights_finite():
            raise self._diverged(
                f"the weights became non-finite by optimizer step {self.progress.step}"
            )
        self.progress.elapsed_s = self._elapsed()
        ranks = self.dist.gather_to_main(self._rank_state())
        self.dist.run_on_main(lambda: self._write_checkpoint(name, ranks))

    def _write_checkpoint(self, name: str, ranks: list[dict]) -> None:
        try:
            checkpoint.save_atomic(self._state(ranks), self.run_dir / name)
        except OSError as error:
            raise UserError(
                f"could not write {self.run_dir / name} ({error}); the previous checkpoint is "
                "intact. Free space or fix permissions, then resume from it."
            ) from error

    def _save_epoch_end(self) -> None:
        config, epoch = self.config, self.progress.epoch
        self._save(checkpoint.LAST)
        if self.dist.is_main and (config.keep_last > 0 or epoch in config.save_at):
            name = checkpoint.per_epoch_name(epoch)
            checkpoint.keep_copy(self.run_dir, checkpoint.LAST, name)
            checkpoint.prune_per_epoch(self.run_dir, config.keep_last, config.save_at)

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._session_started

    # --- stopping ------------------------------------------------------------------------

    def _agree_on_stop(self) -> None:
        """Under torchrun a signal may reach one rank only; all ranks learn of it here, at a
        step every rank calls this at, and stop after that same step."""
        self.stop_signal = self.dist.agree_on_signal(self.signals.received, self.device)

    def _average_gradients(self) -> None:
        """All-reduce the gradients by hand, when DDP's backward hook did not run."""
        for parameter in self.model.parameters():
            if parameter.grad is not None:
                self.dist.all_reduce(parameter.grad).div_(self.dist.world_size)

    def _stop_if_requested(self) -> None:
        if self.stop_signal is None:
            return
        self._save(checkpoint.LAST)
        name = signal.Signals(self.stop_signal).name
        position = self.train_loader.state_dict()["next_batch"]
        self.logger.info(
            "stopped by %s after step %d (epoch %d%s); continue with: %s",
            name,
            self.progress.step,
            self.progress.epoch + (1 if position else 0),
            f", batch {position} of {len(self.train_loader)}" if position else " done",
            self.resume_command(),
        )
        raise RunStopped(f"stopped by {name}", 128 + self.stop_signal, reported=True)

    def _weights_finite(self) -> bool:
        """Whether every parameter and buffer (and their average) is finite: one fused
        max-norm kernel per dtype and one host sync, a small cost beside a checkpoint."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        if self.ema is not None:
            tensors += [t for t in self.ema.module.state_dict().values() if t.is_floating_point()]
        if not tensors:
            return True
        norms = torch._foreach_norm(tensors, float("inf"))  # NaN and inf propagate
        return bool(torch.stack([norm.float() for norm in norms]).isfinite().all())

    def _diverged(self, what: str) -> DivergenceError:
        lr = self.optimizer.param_groups[0]["lr"]
        good = checkpoint.newest_finite(self.run_dir)
        kept = f"the last good checkpoint is {good}" if good else "no good checkpoint was written"
        return DivergenceError(
            f"{what} (after {self.progress.step} optimizer steps, lr {lr:.3g}); {kept}. Lower "
            "--optim.lr or set --clip-grad (e.g. 1.0), or use --nan-policy skip to drop "
            "batches whose loss is non-finite."
        )

    def _lost_contact(self, error: Exception) -> LostContactError:
        last = self.run_dir / checkpoint.LAST
        kept = (
            f"The last checkpoint is {last}; continue with the same torchrun command and "
            f"--resume {last} (or --resume auto)."
            if last.exists()
            else "No checkpoint was written yet."
        )
        return LostContactError(
            f"lost contact with the other processes ({str(error).splitlines()[0]}). Another "
            "rank died (its own error is above) or did not answer within --dist-timeout "
            f"{self.config.dist_timeout:g} s. {kept}"
        )

    def _early_stop_reason(self) -> str | None:
        config, progress = self.config, self.progress
        if config.early_stop_patience and progress.evals_since_best >= config.early_stop_patience:
            return (
                f"{config.monitor} has not improved for {progress.evals_since_best} evaluations "
                f"(best {progress.best_value:.4g} at epoch {progress.best_epoch}; "
                f"--early-stop-patience {config.early_stop_patience})"
            )
        lr = self.optimizer.param_groups[0]["lr"]
        if lr < config.early_stop_lr:
            return f"the learning rate {lr:.3g} fell below --early-stop-lr {config.early_stop_lr:g}"
        return None
