"""The training loop: lr -> forward under autocast -> loss -> backward -> clip -> step -> log."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from toolbox import checkpoint
from toolbox.config import TrainingConfig, to_plain
from toolbox.data.loaders import Normalizer, make_loader, to_device
from toolbox.errors import UserError
from toolbox.evaluation import Evaluation, evaluate
from toolbox.metrics import METRICS
from toolbox.progress import ProgressDisplay, format_duration
from toolbox.run import (
    ENV,
    LOG,
    MetricsTable,
    close_logging,
    environment,
    new_run_dir,
    save_config,
    setup_logging,
    write_json,
)
from toolbox.run import (
    METRICS as METRICS_FILE,
)
from toolbox.runtime import autocast, resolve_device, rng_state, seed_everything, set_rng_state


@dataclass
class Progress:
    """How far the run has come; saved in every checkpoint and restored on resume."""

    epoch: int = 0
    """Completed epochs."""
    step: int = 0
    """Completed optimizer steps."""
    elapsed_s: float = 0.0
    """Training and evaluation time so far, over all sessions of the run."""
    best_value: float | None = None
    """Best value of the monitored metric so far."""
    best_epoch: int | None = None


class Trainer:
    def __init__(self, config: TrainingConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console()
        resumed = checkpoint.load_checkpoint(config.resume) if config.resume else None

        # Everything that can fail on user input happens before the run directory exists.
        seed_everything(config.seed)
        self.device = resolve_device(config.device)
        self.splits = config.data.build()
        info = self.splits.info
        self.model = config.model.build(info).to(self.device)
        self.criterion = config.loss.build().to(self.device)
        self.metrics = {name: METRICS.get(name)() for name in config.metrics}
        self.normalizer = Normalizer(info.mean, info.std, len(info.input_shape), self.device)
        self.train_loader = make_loader(
            self.splits.train,
            config.batch_size,
            kind=config.data.loader,
            device=self.device,
            train=True,
            seed=config.seed,
            num_workers=config.num_workers,
        )
        self.val_loader = make_loader(
            self.splits.val,
            config.eval_batch_size,
            kind=config.data.loader,
            device=self.device,
            train=False,
            num_workers=config.num_workers,
        )
        if len(self.train_loader) == 0:
            raise UserError(
                f"--batch-size {config.batch_size} is larger than the training split "
                f"({len(self.splits.train['target'])} samples), so an epoch has no full batch; "
                "lower --batch-size."
            )
        if len(self.splits.val["target"]) == 0:
            raise UserError(
                f"the validation split of {config.dataset!r} is empty; raise "
                "--data.val-fraction (e.g. 0.1)."
            )
        self.optimizer = config.optim.build(self.model)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / config.grad_accum)
        self.scheduler = config.sched.build(
            self.optimizer, self.steps_per_epoch, config.epochs, config.monitor_mode
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.progress = Progress()
        if resumed is not None:
            self._restore(resumed)
            if self.progress.epoch >= config.epochs:
                raise UserError(
                    f"--resume {config.resume}: the run has already trained "
                    f"{self.progress.epoch} of --epochs {config.epochs}; pass a larger "
                    f"--epochs (e.g. --epochs {self.progress.epoch + 10}) to train further."
                )
        # The compiled module shares parameters with self.model, whose state_dict (without
        # the "_orig_mod." prefix) is what checkpoints hold.
        self.forward_model = torch.compile(self.model) if config.compile else self.model

        self.run_dir = Path(config.resume).parent if resumed else new_run_dir(config)
        self.logger = setup_logging(self.run_dir / LOG, self.console, self.console.is_terminal)
        self.table = MetricsTable(
            self.run_dir / METRICS_FILE,
            ["epoch", "step", "lr", "train_loss", "val_loss"]
            + [f"val_{name}" for name in self.metrics]
            + ["elapsed_s"],
        )
        self._write_records(resumed is not None)

    # --- set-up and records --------------------------------------------------------------

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise UserError(
                f"--resume {self.config.resume}: its weights do not fit the model built from "
                f"its config ({str(error).splitlines()[0]})."
            ) from error
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.progress = Progress(**state["progress"])

    def _write_records(self, resumed: bool) -> None:
        config = self.config
        save_config(self.run_dir, config)
        env = environment(self.device)
        if not (self.run_dir / ENV).exists():
            write_json(self.run_dir / ENV, env)
        info = self.splits.info
        num_params = sum(p.numel() for p in self.model.parameters())
        num_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        verb = f"resuming at epoch {self.progress.epoch + 1}" if resumed else "run"
        self.logger.info("%s %s", verb, self.run_dir)
        self.logger.info(
            "%s on %s: %s train / %s val samples, input %s, %d outputs (%s)",
            config.arch,
            config.dataset,
            f"{len(self.splits.train['target']):,}",
            f"{len(self.splits.val['target']):,}",
            "x".join(map(str, info.input_shape)),
            info.num_outputs,
            info.task,
        )
        self.logger.info(
            "model: %s parameters (%s trainable); device %s (%s), precision %s%s",
            f"{num_params:,}",
            f"{num_trainable:,}",
            self.device,
            env["device_name"],
            config.precision,
            ", compiled" if config.compile else "",
        )
        self.logger.info("architecture:\n%s", self.model, extra={"file_only": True})
        self.logger.info("config: %s", to_plain(config), extra={"file_only": True})
        self.logger.info("environment: %s", env, extra={"file_only": True})
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops points a crashed session logged after its last checkpoint.
        self.writer = SummaryWriter(
            str(self.run_dir), purge_step=self.progress.step if resumed else None
        )

    def _state(self) -> dict:
        return {
            "format": checkpoint.FORMAT,
            "config": to_plain(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.train_loader.state_dict(),
            "rng": rng_state(),
            "progress": dataclasses.asdict(self.progress),
        }

    def _save(self, name: str) -> None:
        try:
            checkpoint.save_atomic(self._state(), self.run_dir / name)
        except OSError as error:
            raise UserError(
                f"could not write {self.run_dir / name} ({error}); the previous checkpoint is "
                "intact. Free space or fix permissions, then resume."
            ) from error

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> Path:
        config = self.config
        total_steps = self.steps_per_epoch * config.epochs
        display = ProgressDisplay(self.console, self.logger, total_steps, self.progress.step)
        try:
            with display:
                for epoch_idx in range(self.progress.epoch, config.epochs):
                    started = time.perf_counter()
                    train_loss = self._train_epoch(epoch_idx, display)
                    self.progress.epoch = epoch_idx + 1
                    if self.progress.epoch % config.eval_every == 0 or (
                        self.progress.epoch == config.epochs
                    ):
                        self.progress.elapsed_s += time.perf_counter() - started
                        started = time.perf_counter()
                        self._evaluate_and_record(train_loss, display)
                    self.progress.elapsed_s += time.perf_counter() - started
                    self._save(checkpoint.LAST)
        except KeyboardInterrupt:
            resume_from = self.run_dir / checkpoint.LAST
            if resume_from.exists():
                self.logger.info(
                    "interrupted in epoch %d; continue with: python train.py --resume %s",
                    self.progress.epoch + 1,
                    resume_from,
                )
            raise
        finally:
            self.writer.close()
        best = self.progress.best_value
        self.logger.info(
            "done: %d epochs in %s; best %s %s at epoch %s. Evaluate on the test split with: "
            "python test.py %s",
            self.progress.epoch,
            format_duration(self.progress.elapsed_s),
            config.monitor,
            "n/a" if best is None else f"{best:.4f}",
            self.progress.best_epoch,
            self.run_dir,
        )
        close_logging(self.logger)
        return self.run_dir

    def _train_epoch(self, epoch_idx: int, display: ProgressDisplay) -> float:
        config, device = self.config, self.device
        self.forward_model.train()
        epoch_label = f"epoch {epoch_idx + 1}/{config.epochs}"
        num_batches = len(self.train_loader)
        # Loss sums stay on the device; the host reads them once per logging interval.
        epoch_loss = torch.zeros((), device=device)
        window_loss = torch.zeros((), device=device)
        epoch_samples = window_samples = 0
        window_started = time.perf_counter()
        for batch_idx, batch in enumerate(self.train_loader):
            batch = to_device(batch, device)
            target = batch["target"]
            group_start = batch_idx - batch_idx % config.grad_accum
            group_size = min(config.grad_accum, num_batches - group_start)
            with autocast(device, config.precision):
                output = self.forward_model(self.normalizer(batch["input"]))
                loss = self.criterion(output.float(), target)
            self.scaler.scale(loss / group_size).backward()
            batch_samples = target.shape[0]
            epoch_loss += loss.detach() * batch_samples
            window_loss += loss.detach() * batch_samples
            epoch_samples += batch_samples
            window_samples += batch_samples
            if batch_idx + 1 - group_start < group_size:
                continue  # accumulate more gradients before stepping
            if config.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if config.sched.interval == "step":
                self.scheduler.step()
            self.progress.step += 1
            display.advance()
            if self.progress.step % config.log_every == 0:
                mean_loss = (window_loss / window_samples).item()  # the interval's one sync
                seconds = time.perf_counter() - window_started
                display.report(epoch_label, mean_loss, window_samples / seconds)
                self.writer.add_scalar("train/loss_step", mean_loss, self.progress.step)
                window_loss.zero_()
                window_samples = 0
                window_started = time.perf_counter()
        return (epoch_loss / epoch_samples).item()

    def _evaluate_and_record(self, train_loss: float, display: ProgressDisplay) -> None:
        config = self.config
        result: Evaluation = evaluate(
            self.forward_model,
            self.val_loader,
            normalizer=self.normalizer,
            criterion=self.criterion,
            metrics=self.metrics,
            device=self.device,
            precision=config.precision,
            classification=self.splits.info.task == "classification",
        )
        values = {"val_loss": result.loss}
        values.update({f"val_{name}": value for name, value in result.metrics.items()})
        monitored = values[config.monitor]
        if config.sched.interval == "eval":
            self.scheduler.step(monitored)
        lr = self.optimizer.param_groups[0]["lr"]
        best = self.progress.best_value
        improved = best is None or (
            monitored < best if config.monitor_mode == "min" else monitored > best
        )
        if improved:
            self.progress.best_value = monitored
            self.progress.best_epoch = self.progress.epoch
        epoch = self.progress.epoch
        row = {"epoch": epoch, "step": self.progress.step, "lr": lr, "train_loss": train_loss}
        row.update(values)
        row["elapsed_s"] = round(self.progress.elapsed_s, 3)
        self.table.append(row)
        self.writer.add_scalar("train/loss", train_loss, epoch)
        self.writer.add_scalar("lr", lr, epoch)
        for name, value in values.items():
            self.writer.add_scalar(name.replace("val_", "val/", 1), value, epoch)
        self.writer.flush()
        display.show_metrics(values)
        self.logger.info(
            "epoch %d/%d train_loss %.4f %s lr %.3g%s",
            epoch,
            config.epochs,
            train_loss,
            " ".join(f"{name} {value:.4f}" for name, value in values.items()),
            lr,
            " (best)" if improved else "",
        )
        if improved:
            self._save(checkpoint.BEST)
