"""The training loop: lr -> forward under autocast -> loss -> backward -> clip -> step -> log."""

from __future__ import annotations

import math
import os
import shlex
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console

from toolbox.config.plain import to_plain
from toolbox.config.training import TrainingConfig
from toolbox.data.augment import BatchAugment
from toolbox.data.loaders import make_loader, to_device
from toolbox.errors import RunStopped, UserError
from toolbox.metrics import METRICS
from toolbox.models.steps import MAIN_LOSS, has_own_steps
from toolbox.records import checkpoint, tensorboard
from toolbox.records.layout import LOG
from toolbox.records.layout import METRICS as METRICS_FILE
from toolbox.records.lock import RunLock
from toolbox.records.log import close_logging, setup_logging
from toolbox.records.metrics_table import MetricsTable
from toolbox.records.run_dir import new_run_dir
from toolbox.training.averaging import WeightAverage
from toolbox.training.display import ProgressDisplay, format_duration
from toolbox.training.distributed import Discard, Distributed, is_communication_failure, wrap_in_ddp
from toolbox.training.evaluation import evaluate, evaluate_own_steps
from toolbox.training.run_control import Progress, RunControl
from toolbox.training.runtime import (
    autocast,
    build_model,
    input_normalizer,
    resolve_device,
    seed_everything,
)
from toolbox.training.signals import StopSignals, active_watch, watch_stop_signals
from toolbox.training.steps import StepRunner, draw_figures


class Trainer(RunControl):
    """Builds the run from its config and trains it: the loop and the evaluations."""

    def __init__(
        self,
        config: TrainingConfig,
        console: Console | None = None,
        command: list[str] | None = None,
        distributed: Distributed | None = None,
        test_program: tuple[str, ...] = ("test.py",),
    ) -> None:
        """``command`` is the script and its arguments, as the user ran them (for run.json and
        the resume hints); ``test_program`` the script (and leading arguments) the final hint
        says evaluates the run."""
        self.config = config
        self.command = command
        self.program = command[0] if command else "train.py"
        self.test_program = tuple(test_program)
        self.dist = distributed or Distributed()
        # Only rank 0 prints and writes the run directory; the others stay quiet.
        self.console = console or Console(quiet=not self.dist.is_main)
        # The command's watch when train_main runs us; fit() watches itself otherwise.
        self.signals = active_watch() or StopSignals()
        self.lock: RunLock | None = None
        """The run directory's lock, held by rank 0 from before anything is written into it
        until fit() ends (or this process does)."""
        try:
            self._set_up(config)
        except BaseException:
            self._release_run_dir()
            raise

    def _set_up(self, config: TrainingConfig) -> None:
        if config.resume and self.dist.is_main:
            # Before reading the checkpoint: a live run's directory is never touched.
            self.lock = RunLock.acquire(Path(config.resume).parent, f"--resume {config.resume}")
        resumed = checkpoint.load_checkpoint(config.resume) if config.resume else None

        # Everything that can fail on user input happens before the run directory exists.
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        seed_everything(config.seed)
        self.device = resolve_device(self.dist.device or config.device)
        self.splits = config.data.build()
        info = self.splits.info
        self.model = build_model(config, info, self.device)
        if config.sync_bn:
            if self.dist.enabled and self.device.type != "cuda":
                raise UserError(
                    "--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on "
                    f"{self.device.type}); drop --sync-bn, or train on GPUs."
                )
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if self.dist.rank > 0:
            # Every rank built the same initial weights; from here on each draws its own
            # dropout masks and noise. Rank 0 keeps the single-process stream.
            seed_everything(config.seed + self.dist.rank)
        self.skipped_init_keys: list[str] = []
        if config.init_from is not None and resumed is None:
            self.skipped_init_keys = checkpoint.load_model_state(
                self.model,
                checkpoint.load_weights(config.init_from),
                f"--init-from {config.init_from}",
                strict=False,
            )
        # Before a resume restores the average: a new run's average starts at the weights.
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.own_steps = has_own_steps(self.model)
        self.loss_names = tuple(self.model.loss_names) if self.own_steps else (MAIN_LOSS,)
        self.criterion = config.loss.build().to(self.device)
        self.metrics = {name: METRICS.get(name)() for name in config.metrics}
        self.normalizer = input_normalizer(config, info, self.device)
        self.augment = None
        if config.data.augment != "none":
            if len(info.input_shape) != 3:
                raise UserError(
                    f"--data.augment {config.data.augment} needs image inputs (C, H, W), but "
                    f"this dataset's inputs have shape {tuple(info.input_shape)}; use "
                    "--data.augment none."
                )
            self.augment = BatchAugment(
                config.data.augment, self.device, config.seed + 1 + self.dist.rank
            )
        self.train_loader, self.val_loader = (
            make_loader(
                split,
                batch_size,
                kind=config.data.loader,
                device=self.device,
                train=train,
                seed=config.seed,
                num_workers=config.num_workers,
                placement=config.data.placement,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            for split, batch_size, train in (
                (self.splits.train, config.batch_size, True),
                (self.splits.val, config.eval_batch_size, False),
            )
        )
        if len(self.train_loader) == 0:
            processes = f" times {self.dist.world_size} processes" if self.dist.enabled else ""
            raise UserError(
                f"--batch-size {config.batch_size}{processes} is larger than the training "
                f"split ({len(self.splits.train['target'])} samples), so an epoch has no full "
                "batch; lower --batch-size."
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
        self.progress = Progress(steps_per_epoch=self.steps_per_epoch)
        self.resume_notes: list[str] = []
        self._ignored_runtime: str | None = None
        """The runtime.json text last ignored, so that a bad edit is logged once."""
        if resumed is not None:
            self._restore(resumed)
            if self.progress.epoch >= config.epochs:
                raise UserError(
                    f"--resume {config.resume}: the run has already trained "
                    f"{self.progress.epoch} of --epochs {config.epochs}; pass a larger "
                    f"--epochs (e.g. --epochs {self.progress.epoch + 10}) to train further."
                )
        # DDP goes inside torch.compile, so the compiler sees its bucketed all-reduces. Both
        # wrappers share parameters with self.model, whose state_dict (no "module." or
        # "_orig_mod." prefix) is what checkpoints hold.
        step_module = StepRunner(self.model) if self.own_steps else self.model
        self.ddp = wrap_in_ddp(step_module, self.device) if self.dist.enabled else None
        train_module = self.ddp or step_module
        self.forward_model = torch.compile(train_module) if config.compile else train_module
        # Evaluations (and figures) see the average, when there is one, as test.py does.
        self.evaluated_model = self.model if self.ema is None else self.ema.module
        if self.ema is None:
            self.eval_forward = self.forward_model
        else:
            self.eval_forward = StepRunner(self.ema.module) if self.own_steps else self.ema.module
        self.stop_signal: int | None = None
        """The stop signal all ranks agreed on (see _agree_on_stop)."""
        self.compiled_warm = False

        self._agree_on_stop()
        if self.stop_signal is not None:
            self._stop_before_the_first_step()
        self.run_dir = Path(self.dist.run_on_main(lambda: str(self._claim_run_dir(resumed))))
        self.logger = setup_logging(
            self.run_dir / LOG if self.dist.is_main else None,
            self.console,
            self.console.is_terminal,
        )
        if self.dist.is_main:
            columns = ["epoch", "step", "lr"]
            columns += [f"{split}_{name}" for split in ("train", "val") for name in self.loss_names]
            columns += [f"val_{name}" for name in self.metrics]
            columns += ["nan_skips"] if config.nan_policy == "skip" else []
            self.table = MetricsTable(self.run_dir / METRICS_FILE, columns + ["elapsed_s"])
            self._write_records(resumed is not None)
        else:
            self.table = self.writer = self.plotter = self.record = Discard()
            self.last_values = {}
        for note in self.resume_notes:
            self.logger.info("%s", note)
        if self.dist.enabled:
            self.logger.info(
                "distributed: %d processes (%s); batch size %d per process, %d in all%s",
                self.dist.world_size,
                self.dist.backend,
                config.batch_size,
                config.batch_size * self.dist.world_size,
                f" (x{config.grad_accum} accumulated per step)" if config.grad_accum > 1 else "",
            )

    def _stop_before_the_first_step(self) -> None:
        """A stop during set-up writes no checkpoint: a new run's directory then holds none,
        which the same command moves aside before starting again (see new_run_dir)."""
        kept = "its checkpoint is unchanged" if self.config.resume else "no checkpoint was written"
        raise RunStopped(
            f"stopped by {signal.Signals(self.stop_signal).name} during set-up, before the "
            f"first step; {kept}: run the same command again.",
            128 + self.stop_signal,
        )

    def _claim_run_dir(self, resumed: dict | None) -> Path:
        if resumed:
            return Path(self.config.resume).parent  # its lock is held already
        run_dir, self.lock = new_run_dir(self.config)
        return run_dir

    def _release_run_dir(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> Path:
        try:
            with watch_stop_signals() as self.signals:
                return self._fit()
        finally:
            self._release_run_dir()

    def _fit(self) -> Path:
        config = self.config
        self._session_started = time.perf_counter()
        self._elapsed_before = self.progress.elapsed_s
        total_steps = self.steps_per_epoch * config.epochs
        display = ProgressDisplay(self.console, self.logger, total_steps, self.progress.step)
        stop_reason = None
        try:
            self._agree_on_stop()
            if self.stop_signal is not None:  # came after the run directory was set up
                self._stop_before_the_first_step()
            with display:
                for epoch_idx in range(self.progress.epoch, config.epochs):
                    self._read_runtime()
                    train_losses = self._train_epoch(epoch_idx, display)
                    self.progress.epoch = epoch_idx + 1
                    self.progress.epoch_loss_sums = {}
                    self.progress.epoch_samples = 0
                    if self.progress.epoch % config.eval_every == 0 or (
                        self.progress.epoch == config.epochs
                    ):
                        self._evaluate_and_record(train_losses, display)
                        stop_reason = self._early_stop_reason()
                    self._save_epoch_end()
                    self._agree_on_stop()
                    if stop_reason:
                        self.logger.info("stopping early: %s", stop_reason)
                        break
                    if self.progress.epoch < config.epochs:  # a stop after the last: finished
                        self._stop_if_requested()
            self.plotter.update(force=True)
            if self.dist.is_main:
                final = {**self.last_values, f"best_{config.monitor}": self.progress.best_value}
                tensorboard.log_hparams(
                    self.writer,
                    to_plain(config),
                    {key: value for key, value in final.items() if value is not None},
                    step=self.progress.epoch,
                )
            # A signal during the last epoch's evaluation and save, or the records above.
            self._agree_on_stop()
        except RunStopped as stopped:
            self.plotter.update(force=True)
            self.record.finish("interrupted", reason=str(stopped))
            raise
        except UserError as error:
            self.logger.info("error: %s", error, extra={"file_only": True})  # stderr has it
            self.record.finish("failed", error=str(error))
            raise
        except KeyboardInterrupt:
            self.record.finish("interrupted", reason="interrupted by Ctrl-C")
            resume_from = self.run_dir / checkpoint.LAST
            if resume_from.exists():
                self.logger.info(
                    "interrupted; continue from the last checkpoint with: %s",
                    self.resume_command(),
                )
            raise
        except Exception as error:
            if self.dist.enabled and is_communication_failure(error):
                lost = self._lost_contact(error)
                self.record.finish("failed", error=str(lost))
                raise lost from error
            self.record.finish("failed", error=f"{type(error).__name__}: {error}")
            raise
        finally:
            self.writer.close()
        self.record.finish("finished", reason=stop_reason)
        best = self.progress.best_value
        self.logger.info(
            "done: %d epochs in %s; best %s %s at epoch %s. Evaluate on the test split with: %s",
            self.progress.epoch,
            format_duration(self.progress.elapsed_s),
            config.monitor,
            "n/a" if best is None else f"{best:.4f}",
            self.progress.best_epoch,
            shlex.join(["python", *self.test_program, str(self.run_dir)]),
        )
        if self.stop_signal is not None:
            # The stop came during the last epoch or the end-of-run records: the run is
            # complete (and recorded so), but whoever asked to stop, a scheduler or a sweep,
            # is still told.
            name = signal.Signals(self.stop_signal).name
            self.logger.info("stopped by %s after the run had finished; it is complete", name)
            close_logging(self.logger)
            raise RunStopped(f"stopped by {name}", 128 + self.stop_signal, reported=True)
        close_logging(self.logger)
        return self.run_dir

    def resume_command(self) -> str:
        """The shell command that continues this run, quoted for copy and paste."""
        return shlex.join(["python", self.program, "--resume", str(self.run_dir / checkpoint.LAST)])

    def _train_epoch(self, epoch_idx: int, display: ProgressDisplay) -> float:
        config, device, progress = self.config, self.device, self.progress
        self.forward_model.train()
        epoch_label = f"epoch {epoch_idx + 1}/{config.epochs}"
        num_batches = len(self.train_loader)
        first_batch = self.train_loader.resume_batch  # > 0 when resuming mid-epoch
        skip_policy = config.nan_policy == "skip"
        batches_on_device = getattr(self.train_loader, "on_device", False)
        # The losses of the steps since the last sync, as device scalars: keeping them costs
        # no kernel, and reading them all at the next sync finds any non-finite one.
        window: list[tuple[int, int, torch.Tensor]] = []  # (batch_idx, samples, loss)
        window_started = time.perf_counter()

        def flush() -> tuple[float, int]:
            """Read the window's losses (the one host sync), summed over all ranks, and add
            them to the epoch's sums; returns the window's mean loss and sample count. Every
            rank calls it at the same steps, with windows of the same steps."""
            nonlocal window
            if not window:
                return float("nan"), 0
            # One row per step: its named losses times its samples, then its samples.
            rows = torch.stack(
                [
                    torch.cat([losses * samples, losses.new_full((1,), samples)])
                    for _, samples, losses in window
                ]
            )
            reduced = self.dist.all_reduce(rows).tolist()
            totals, count = [0.0] * len(self.loss_names), 0
            for (batch_idx, _, _), row in zip(window, reduced, strict=True):
                if not math.isfinite(row[0]):  # the main loss, on any rank: all stop together
                    raise self._diverged(loss_became_non_finite(epoch_idx, batch_idx))
                totals = [total + value for total, value in zip(totals, row[:-1], strict=True)]
                count += round(row[-1])
            sums = progress.epoch_loss_sums
            for name, total in zip(self.loss_names, totals, strict=True):
                sums[name] = sums.get(name, 0.0) + total
            progress.epoch_samples += count
            window = []
            return totals[0] / count, count

        for batch_idx, batch in enumerate(self.train_loader, first_batch):
            if not batches_on_device:
                batch = to_device(batch, device)
            target = batch["target"]
            group_start = batch_idx - batch_idx % config.grad_accum
            group_size = min(config.grad_accum, num_batches - group_start)
            inputs = batch["input"] if self.augment is None else self.augment(batch["input"])
            steps_now = batch_idx + 1 - group_start == group_size
            # Only the last batch of an accumulation group all-reduces its gradients.
            with self.ddp.no_sync() if self.ddp and not steps_now else nullcontext():
                with autocast(device, config.precision):
                    if self.own_steps:
                        step_batch = {**batch, "input": self.normalizer(inputs)}
                        named, _ = self.forward_model(step_batch, True)
                        losses = torch.stack([named[name].float() for name in self.loss_names])
                        loss = losses[0]
                    else:
                        output = self.forward_model(self.normalizer(inputs))
                        loss = self.criterion(output.float(), target)
                        losses = loss.reshape(1)
                finite = not skip_policy or self.dist.all_ranks_true(
                    bool(torch.isfinite(loss).item()),
                    device,  # the policy's sync per batch
                )
                if finite:
                    self.scaler.scale(loss / group_size if group_size > 1 else loss).backward()
                    window.append((batch_idx, len(inputs), losses.detach()))
            if not finite:
                progress.nan_skips += 1
                self.logger.info(
                    "%s batch %d: non-finite loss, batch skipped (%d so far)",
                    epoch_label,
                    batch_idx + 1,
                    progress.nan_skips,
                )
                if progress.nan_skips > config.max_nan_skips:
                    raise self._diverged(loss_became_non_finite(epoch_idx, batch_idx))
                if self.ddp and steps_now:
                    self._average_gradients()  # the group's earlier batches skipped theirs
            if not steps_now:
                continue  # accumulate more gradients before stepping
            if config.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
            every = config.histogram_every
            at_epoch_end = batch_idx + 1 == num_batches
            if every and at_epoch_end and (epoch_idx + 1) % every == 0 and self.dist.is_main:
                # Before the step: zero_grad(set_to_none) would take the gradients away.
                scale = 1.0 if config.clip_grad is not None else self.scaler.get_scale()
                tensorboard.log_histograms(self.writer, self.model, epoch_idx + 1, grad_scale=scale)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if config.sched.interval == "step":
                self.scheduler.step()
            progress.step += 1
            if self.ema is not None:
                self.ema.update(self.model, progress.step)
            display.advance()
            if config.compile and not self.compiled_warm:
                # The first step compiles; time it apart so throughput figures exclude it.
                flush()
                self.logger.info(
                    "torch.compile warm-up: the first step took %.1fs",
                    time.perf_counter() - window_started,
                )
                self.compiled_warm = True
                window_started = time.perf_counter()

            if progress.step % config.log_every == 0:
                mean_loss, samples = flush()
                if samples:
                    seconds = time.perf_counter() - window_started
                    display.report(epoch_label, mean_loss, samples / seconds)
                    self.writer.add_scalar("train/loss_step", mean_loss, progress.step)
                window_started = time.perf_counter()
            if batch_idx + 1 == num_batches:
                continue  # the epoch's end evaluates and saves (and stops) in fit()
            if not self.dist.enabled or progress.step % config.log_every == 0:
                self._agree_on_stop()  # under torchrun a collective, so once per log interval
            every = config.checkpoint_every_steps
            if (every and progress.step % every == 0) or self.stop_signal is not None:
                flush()  # never save a state that has taken a non-finite step
                self._stop_if_requested()
                self._save(checkpoint.LAST)
        flush()
        samples = max(progress.epoch_samples, 1)
        return {name: total / samples for name, total in progress.epoch_loss_sums.items()}

    def _evaluate_and_record(self, train_losses: dict[str, float], display) -> None:
        config, progress = self.config, self.progress
        self.dist.sync_buffers(self.evaluated_model)
        common = {
            "normalizer": self.normalizer,
            "metrics": self.metrics,
            "device": self.device,
            "precision": config.precision,
            "reduce": self.dist.all_reduce,
        }
        if self.own_steps:
            result = evaluate_own_steps(
                self.eval_forward, self.val_loader, loss_names=self.loss_names, **common
            )
            self._write_figures()
        else:
            result = evaluate(
                self.eval_forward,
                self.val_loader,
                criterion=self.criterion,
                classification=self.splits.info.task == "classification",
                **common,
            )
        values = {f"val_{name}": value for name, value in result.losses.items()}
        values.update({f"val_{name}": value for name, value in result.metrics.items()})
        monitored = values[config.monitor]
        if config.sched.interval == "eval":
            self.scheduler.step(monitored)
        lr = self.optimizer.param_groups[0]["lr"]
        best = progress.best_value
        improved = math.isfinite(monitored) and (
            best is None or (monitored < best if config.monitor_mode == "min" else monitored > best)
        )
        if improved:
            progress.best_value = monitored
            progress.best_epoch = progress.epoch
            progress.evals_since_best = 0
        else:
            progress.evals_since_best += 1
        epoch = progress.epoch
        train_values = {f"train_{name}": value for name, value in train_losses.items()}
        row = {"epoch": epoch, "step": progress.step, "lr": lr, **train_values, **values}
        if config.nan_policy == "skip":
            row["nan_skips"] = progress.nan_skips
        row["elapsed_s"] = round(self._elapsed(), 3)
        self.table.append(row)
        self.writer.add_scalar("lr", lr, epoch)
        for name, value in {**train_values, **values}.items():
            self.writer.add_scalar(name.replace("_", "/", 1), value, epoch)
        self.writer.flush()
        self.last_values = values
        self.plotter.update()
        display.show_evaluation(row, improved)
        self.logger.info(
            "epoch %d/%d %s lr %.3g%s",
            epoch,
            config.epochs,
            " ".join(f"{name} {value:.4f}" for name, value in {**train_values, **values}.items()),
            lr,
            " (best)" if improved else "",
        )
        self.record.progress(
            progress.epoch, progress.best_value, progress.best_epoch, self._elapsed()
        )
        if improved:
            self._save(checkpoint.BEST)

    def _write_figures(self) -> None:
        """The figures of a model's own steps (e.g. a diffusion model's samples), drawn by
        rank 0 once per evaluation, to TensorBoard and <name>.png in the run directory."""
        if self.dist.is_main:
            figures = draw_figures(self.evaluated_model)
            tensorboard.write_figures(self.writer, self.run_dir, figures, self.progress.epoch)


def loss_became_non_finite(epoch_idx: int, batch_idx: int) -> str:
    return f"the training loss became non-finite in epoch {epoch_idx + 1}, batch {batch_idx + 1}"
