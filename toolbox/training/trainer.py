"""The training loop: lr -> forward under autocast -> loss -> backward -> clip -> step -> log.

The trainer owns the loop and nothing it can delegate. Its collaborators: the run's
checkpointed state (state.RunState), the recorder of the rank that writes (a NullRecorder
on the others), the stop controller, and the events they listen to (events.Events). Every
model goes through the same steps (steps.as_steps): a plain model is adapted with its
criterion."""

from __future__ import annotations

import shlex
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from rich.console import Console

from toolbox.config.training import TrainingConfig
from toolbox.data.loaders import to_device
from toolbox.errors import RunStopped, UserError
from toolbox.models.steps import MAIN_LOSS
from toolbox.records import checkpoint
from toolbox.records.lock import RunLock
from toolbox.records.log import close_logging
from toolbox.records.run_dir import new_run_dir
from toolbox.training.build import build_run
from toolbox.training.display import ProgressDisplay
from toolbox.training.distributed import Distributed, is_communication_failure, wrap_in_ddp
from toolbox.training.evaluation import evaluate_steps
from toolbox.training.events import Events
from toolbox.training.recorder import open_recorder
from toolbox.training.runtime import autocast
from toolbox.training.signals import StopSignals, active_watch, watch_stop_signals
from toolbox.training.state import Progress, SessionClock
from toolbox.training.steps import StepRunner, as_steps
from toolbox.training.stopping import StopController, loss_became_non_finite
from toolbox.training.window import LossWindow

__all__ = ["Progress", "Trainer"]


class Trainer:
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
        self.lock: RunLock | None = None
        """The run directory's lock, held by rank 0 from before anything is written into it
        until fit() ends (or this process does)."""
        self.clock = SessionClock()
        try:
            self._set_up(config)
        except BaseException:
            self._release()
            raise

    def _set_up(self, config: TrainingConfig) -> None:
        if config.resume and self.dist.is_main:
            # Before reading the checkpoint: a live run's directory is never touched.
            self.lock = RunLock.acquire(Path(config.resume).parent, f"--resume {config.resume}")
        resumed = checkpoint.load_checkpoint(config.resume) if config.resume else None
        self.state, parts = build_run(config, self.dist, resumed=resumed)
        self.device, self.splits, self.metrics = parts.device, parts.splits, parts.metrics
        self.normalizer, self.val_loader = parts.normalizer, parts.val_loader
        self.skipped_init_keys = parts.skipped_init_keys
        self.model = self.state.model
        notes = parts.notes + (self.state.restore(resumed) if resumed is not None else [])
        self._wrap_steps(parts.criterion)
        # The command's watch when train_main runs us; fit() watches itself otherwise.
        signals = active_watch() or StopSignals()
        self.stopper = StopController(config, self.dist, self.device, signals, self.state)
        self.stopper.agree()
        self.stopper.raise_if_stopped_in_set_up()
        self.run_dir = Path(self.dist.run_on_main(lambda: str(self._claim_run_dir(resumed))))
        self.recorder = open_recorder(
            self.run_dir,
            config,
            self.state,
            parts,
            dist=self.dist,
            console=self.console,
            command=self.command,
            loss_names=self.loss_names,
            resumed=resumed is not None,
            notes=notes,
            test_command=shlex.join(["python", *self.test_program, str(self.run_dir)]),
        )
        self.logger = self.recorder.logger
        self.stopper.attach(self.run_dir, self.logger)
        self.events = Events((self.recorder, self.stopper))

    def _wrap_steps(self, criterion: torch.nn.Module) -> None:
        """The steps the loop and the evaluations run, wrapped for DDP and torch.compile."""
        classification = self.splits.info.task == "classification"
        self.steps = as_steps(self.model, criterion, classification)
        self.loss_names = tuple(self.steps.loss_names)
        # DDP goes inside torch.compile, so the compiler sees its bucketed all-reduces. Both
        # wrappers share parameters with self.model, whose state_dict (no "module." or
        # "_orig_mod." prefix) is what checkpoints hold.
        runner = StepRunner(self.steps)
        self.ddp = wrap_in_ddp(runner, self.device) if self.dist.enabled else None
        train_runner = self.ddp or runner
        self.runner = torch.compile(train_runner) if self.config.compile else train_runner
        # Evaluations (and figures) see the average, when there is one, as test.py does.
        ema = self.state.ema
        self.evaluated_model = self.model if ema is None else ema.module
        self.eval_steps = (
            self.steps if ema is None else as_steps(ema.module, criterion, classification)
        )
        self.eval_runner = self.runner if ema is None else StepRunner(self.eval_steps)
        self.augment = self.state.augment
        self.batches_on_device = getattr(self.state.train_loader, "on_device", False)
        self.compiled_warm = False

    @property
    def writer(self):
        """The run's TensorBoard writer (None on a rank that does not write)."""
        return self.recorder.writer

    def _claim_run_dir(self, resumed: dict | None) -> Path:
        if resumed:
            return Path(self.config.resume).parent  # its lock is held already
        run_dir, self.lock = new_run_dir(self.config)
        return run_dir

    def _release(self) -> None:
        """The run directory's lock and the loaders' worker processes, once fit() ends (or
        the set-up failed: then only what it got to)."""
        if hasattr(self, "val_loader"):  # set after the state, which holds the train loader
            for loader in (self.state.train_loader, self.val_loader):
                loader.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def resume_command(self) -> str:
        """The shell command that continues this run, quoted for copy and paste."""
        return shlex.join(["python", self.program, "--resume", str(self.run_dir / checkpoint.LAST)])

    # --- fit -----------------------------------------------------------------------------

    def fit(self) -> Path:
        try:
            with watch_stop_signals() as self.stopper.signals:
                return self._fit()
        finally:
            self._release()

    def _fit(self) -> Path:
        progress = self.state.progress
        self.clock.start(progress.elapsed_s)
        total_steps = self.state.steps_per_epoch * self.config.epochs
        display = ProgressDisplay(self.console, self.logger, total_steps, progress.step)
        with self._outcome_recorded():
            self.stopper.agree()  # a signal that came after the run directory was set up
            self.stopper.raise_if_stopped_in_set_up()
            self.events.emit("fit_start", progress)
            with display:
                stop_reason = self._train(display)
            self.recorder.end_of_run()
            # A signal during the last epoch's evaluation and save, or the records above.
            self.stopper.agree()
        self.events.emit("fit_end", "finished", stop_reason, None)
        self._report_if_stopped_late()
        close_logging(self.logger)
        return self.run_dir

    @contextmanager
    def _outcome_recorded(self) -> Iterator[None]:
        """Records how fit() failed or was stopped (run.json's status, the log), and closes
        the TensorBoard writer however it ends. Each kind of end has its own words."""
        try:
            yield
        except RunStopped as stopped:
            self.recorder.redraw_curves()
            self.events.emit("fit_end", "interrupted", str(stopped), None)
            raise
        except UserError as error:
            self.logger.info("error: %s", error, extra={"file_only": True})  # stderr has it
            self.events.emit("fit_end", "failed", None, str(error))
            raise
        except KeyboardInterrupt:
            self.events.emit("fit_end", "interrupted", "interrupted by Ctrl-C", None)
            if (self.run_dir / checkpoint.LAST).exists():
                self.logger.info(
                    "interrupted; continue from the last checkpoint with: %s",
                    self.resume_command(),
                )
            raise
        except Exception as error:
            if self.dist.enabled and is_communication_failure(error):
                lost = self.stopper.lost_contact(error)
                self.events.emit("fit_end", "failed", None, str(lost))
                raise lost from error
            self.events.emit("fit_end", "failed", None, f"{type(error).__name__}: {error}")
            raise
        finally:
            self.recorder.close()

    def _report_if_stopped_late(self) -> None:
        """A stop signal during the last epoch or the end-of-run records: the run is complete
        (and recorded so), but whoever asked to stop, a scheduler or a sweep, is still told."""
        if self.stopper.signal is not None:
            name = signal.Signals(self.stopper.signal).name
            self.logger.info("stopped by %s after the run had finished; it is complete", name)
            close_logging(self.logger)
            raise RunStopped(f"stopped by {name}", 128 + self.stopper.signal, reported=True)

    def _train(self, display: ProgressDisplay) -> str | None:
        """The epochs left; returns the reason of an early stop, if one came."""
        config, progress = self.config, self.state.progress
        for epoch_idx in range(progress.epoch, config.epochs):
            self.stopper.apply_runtime_settings()  # runtime.json, edited while training
            self.events.emit("epoch_start", epoch_idx)
            train_losses = self._train_epoch(epoch_idx, display)
            progress.end_epoch(epoch_idx)
            if progress.epoch % config.eval_every == 0 or progress.epoch == config.epochs:
                self._evaluate(train_losses, display)
            self._save(checkpoint.LAST)
            self.state.keep_epoch_copy(self.run_dir)
            self.events.emit("epoch_end", progress.epoch)
            self.stopper.agree()
            if self.stopper.early_stop_reason:
                self.logger.info("stopping early: %s", self.stopper.early_stop_reason)
                return self.stopper.early_stop_reason
            if progress.epoch < config.epochs:  # a stop after the last: the run finished
                self._stop_if_requested()
        return None

    # --- one epoch -----------------------------------------------------------------------

    def _train_epoch(self, epoch_idx: int, display: ProgressDisplay) -> dict[str, float]:
        """One epoch, from the resume position when resuming mid-epoch; returns the mean of
        each named training loss over the epoch's samples."""
        config, progress, loader = self.config, self.state.progress, self.state.train_loader
        self.runner.train()
        epoch_label = f"epoch {epoch_idx + 1}/{config.epochs}"
        num_batches = len(loader)
        window = LossWindow(
            self.loss_names,
            progress,
            self.dist.all_reduce,
            lambda batch_idx: self.stopper.diverged(loss_became_non_finite(epoch_idx, batch_idx)),
        )
        for batch_idx, batch in enumerate(loader, loader.resume_batch):
            if not self.batches_on_device:
                batch = to_device(batch, self.device)
            group_start = batch_idx - batch_idx % config.grad_accum
            group_size = min(config.grad_accum, num_batches - group_start)
            steps_now = batch_idx + 1 - group_start == group_size
            losses = self._forward_backward(batch, group_size, steps_now)
            if losses is not None:
                window.add(batch_idx, len(batch["input"]), losses)
            else:
                self._skip_batch(epoch_label, epoch_idx, batch_idx, steps_now)
            if not steps_now:
                continue  # accumulate more gradients before stepping
            self._optimizer_step(epoch_idx, at_epoch_end=batch_idx + 1 == num_batches)
            display.advance()
            self.events.emit("step_end", progress.step)
            if config.compile and not self.compiled_warm:
                self._time_compilation(window)
            if progress.step % config.log_every == 0:
                self._report_interval(window, display, epoch_label)
            if batch_idx + 1 < num_batches:  # the epoch's end evaluates and saves in _train
                self._checkpoint_or_stop_within_epoch(window)
        window.flush()
        return progress.epoch_mean_losses()

    def _forward_backward(
        self, batch: dict[str, torch.Tensor], group_size: int, steps_now: bool
    ) -> dict[str, torch.Tensor] | None:
        """The training step and its backward; returns its named losses (device scalars), or
        None when --nan-policy skip drops the batch (its loss is non-finite on some rank)."""
        inputs = batch["input"] if self.augment is None else self.augment(batch["input"])
        # Only the last batch of an accumulation group all-reduces its gradients.
        with self.ddp.no_sync() if self.ddp and not steps_now else nullcontext():
            with autocast(self.device, self.config.precision):
                losses, _ = self.runner({**batch, "input": self.normalizer(inputs)}, True)
            loss = losses[MAIN_LOSS].float()  # fp16's loss scale overflows in half precision
            if self.config.nan_policy == "skip" and not self.dist.all_ranks_true(
                bool(torch.isfinite(loss).item()),
                self.device,  # the policy's sync per batch
            ):
                return None
            self.state.scaler.scale(loss / group_size if group_size > 1 else loss).backward()
        return losses

    def _skip_batch(
        self, epoch_label: str, epoch_idx: int, batch_idx: int, steps_now: bool
    ) -> None:
        progress = self.state.progress
        progress.nan_skips += 1
        self.logger.info(
            "%s batch %d: non-finite loss, batch skipped (%d so far)",
            epoch_label,
            batch_idx + 1,
            progress.nan_skips,
        )
        if progress.nan_skips > self.config.max_nan_skips:
            raise self.stopper.diverged(loss_became_non_finite(epoch_idx, batch_idx))
        if self.ddp and steps_now:
            self.dist.average_gradients(self.model)  # the group's earlier batches skipped theirs

    def _optimizer_step(self, epoch_idx: int, at_epoch_end: bool) -> None:
        """clip -> step -> zero the gradients -> per-step schedule -> weight average."""
        config, state = self.config, self.state
        if config.clip_grad is not None:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
        every = config.histogram_every
        if every and at_epoch_end and (epoch_idx + 1) % every == 0:
            # Before the step: zero_grad(set_to_none) would take the gradients away.
            self.recorder.histograms(
                self.model,
                epoch_idx + 1,
                lambda: 1.0 if config.clip_grad is not None else state.scaler.get_scale(),
            )
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        if config.sched.interval == "step":
            state.scheduler.step()
        state.progress.step += 1
        if state.ema is not None:
            state.ema.update(self.model, state.progress.step)

    def _time_compilation(self, window: LossWindow) -> None:
        """The first step compiles; it is timed apart so that throughput figures exclude it."""
        window.flush()
        self.logger.info(
            "torch.compile warm-up: the first step took %.1fs", time.perf_counter() - window.started
        )
        self.compiled_warm = True
        window.restart_clock()

    def _report_interval(self, window: LossWindow, display: ProgressDisplay, label: str) -> None:
        """The end of a --log-every interval: the window's one host sync, and its report."""
        mean_loss, samples = window.flush()
        if samples:
            seconds = time.perf_counter() - window.started
            display.report(label, mean_loss, samples / seconds)
            self.recorder.step_loss(mean_loss, self.state.progress.step)
        window.restart_clock()

    def _checkpoint_or_stop_within_epoch(self, window: LossWindow) -> None:
        step = self.state.progress.step
        if not self.dist.enabled or step % self.config.log_every == 0:
            self.stopper.agree()  # under torchrun a collective, so once per log interval
        every = self.config.checkpoint_every_steps
        if (every and step % every == 0) or self.stopper.signal is not None:
            window.flush()  # never save a state that has taken a non-finite step
            self._stop_if_requested()
            self._save(checkpoint.LAST)

    # --- evaluating, saving, stopping ----------------------------------------------------

    def _evaluate(self, train_losses: dict[str, float], display: ProgressDisplay) -> None:
        """Evaluate on the validation split, tell the listeners (the recorder writes the
        row), and keep the best checkpoint."""
        config, state, progress = self.config, self.state, self.state.progress
        self.dist.sync_buffers(self.evaluated_model)
        result = evaluate_steps(
            self.eval_steps,
            self.val_loader,
            runner=self.eval_runner,
            normalizer=self.normalizer,
            metrics=self.metrics,
            device=self.device,
            precision=config.precision,
            reduce=self.dist.all_reduce,
        )
        self.recorder.draw_figures(self.evaluated_model, progress.epoch)
        values = {f"val_{name}": value for name, value in result.losses.items()}
        values.update({f"val_{name}": value for name, value in result.metrics.items()})
        monitored = values[config.monitor]
        if config.sched.interval == "eval":
            state.scheduler.step(monitored)
        improved = progress.record_evaluation(monitored, config.monitor_mode)
        train_values = {f"train_{name}": value for name, value in train_losses.items()}
        row = {
            "epoch": progress.epoch,
            "step": progress.step,
            "lr": state.lr,
            **train_values,
            **values,
        }
        if config.nan_policy == "skip":
            row["nan_skips"] = progress.nan_skips
        row["elapsed_s"] = round(self.clock.elapsed(), 3)
        display.show_evaluation(row, improved)
        self.events.emit("evaluation_end", row, improved)
        if improved:
            self._save(checkpoint.BEST)

    def _save(self, name: str) -> None:
        """All ranks call it at the same step. Weights that are no longer finite are never
        written: a step can overflow them while its loss, computed before, was finite."""
        if not self.state.weights_finite():
            raise self.stopper.diverged(
                f"the weights became non-finite by optimizer step {self.state.progress.step}"
            )
        self.state.progress.elapsed_s = self.clock.elapsed()
        self.state.save(self.run_dir / name, self.recorder.run_id)
        self.events.emit("checkpoint", name, self.run_dir / name)

    def _stop_if_requested(self) -> None:
        if self.stopper.signal is None:
            return
        self._save(checkpoint.LAST)
        raise self.stopper.stopped_after_step(self.resume_command())
