"""The training loop: epochs -> (one epoch: epoch.EpochLoop) -> evaluation -> checkpoint.

The trainer owns the loop and nothing it can delegate. Its collaborators: the run's
checkpointed state (state.RunState), the recorder of the rank that writes (a NullRecorder
on the others), the stop controller, the user's callbacks, and the events they listen to
(events.Events). Every model goes through the same steps (steps.as_steps): a plain model is
adapted with its criterion; one that drives its own optimizers gets a ManualOptimization
(manual.py)."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console

from toolbox.callbacks import Callback
from toolbox.config.training import TrainingConfig
from toolbox.errors import RunStopped, UserError
from toolbox.records import checkpoint
from toolbox.records.lock import RunLock
from toolbox.records.log import close_logging
from toolbox.records.run_dir import new_run_dir
from toolbox.training.build import build_run
from toolbox.training.display import ProgressDisplay
from toolbox.training.distributed import Distributed, is_communication_failure, wrap_in_ddp
from toolbox.training.epoch import EpochLoop
from toolbox.training.evaluation import evaluate_steps
from toolbox.training.events import Events
from toolbox.training.manual import training_runner
from toolbox.training.recorder import open_recorder, train_metric_names
from toolbox.training.signals import StopSignals, active_watch, watch_stop_signals
from toolbox.training.state import MAIN_OPTIMIZER, Progress, SessionClock
from toolbox.training.steps import StepRunner, as_steps
from toolbox.training.stopping import StopController

__all__ = ["MAIN_OPTIMIZER", "Progress", "Trainer"]


class Trainer(EpochLoop):
    """Builds the run from its config and trains it: the epochs (one is EpochLoop's) and
    the evaluations."""

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
        self.train_metric_names = tuple(train_metric_names(config, self.metrics))
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
        self.events = Events((self.recorder,))
        self.callbacks = self._build_callbacks(resumed)

    def _wrap_steps(self, criterion: torch.nn.Module) -> None:
        """The steps the loop and the evaluations run, wrapped for DDP and torch.compile."""
        classification = self.splits.info.task == "classification"
        self.steps = as_steps(self.model, criterion, classification)
        self.loss_names = tuple(self.steps.loss_names)
        runner, self.optimization = training_runner(
            self.steps, self.state, self.config, self.dist, self.device, lambda: self.events
        )  # (the events are set up after the steps)
        # DDP goes inside torch.compile, so the compiler sees its bucketed all-reduces. Both
        # wrappers share parameters with self.model, whose state_dict (no "module." or
        # "_orig_mod." prefix) is what checkpoints hold. A model's own backward passes run
        # inside forward, where DDP's reducer cannot see them: each of its optimizers
        # averages its gradients as it steps instead.
        wrapped = self.dist.enabled and self.optimization is None
        self.ddp = wrap_in_ddp(runner, self.device) if wrapped else None
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

    def _build_callbacks(self, resumed: dict | None) -> dict[str, Callback]:
        """--callbacks, built and subscribed in the order given (on the writing rank only,
        unless a callback runs on all), continuing from the resumed checkpoint's states."""
        callbacks = {}
        for name, callback_config in self.config.callback_configs.items():
            callback = callback_config.build()
            if self.dist.is_main or callback.all_ranks:
                callbacks[name] = callback
                self.events.subscribe_callback(callback, self)
        self.state.callbacks = callbacks
        if resumed is not None:
            self.state.restore_callbacks(resumed)
        return callbacks

    # --- what callbacks may do -----------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """End the run after this epoch (or this --eval-every-steps evaluation), finished
        and resumable as an early stop is; ``reason`` goes to the log and run.json."""
        self.stopper.request_stop(reason)

    def log_values(self, values: dict[str, float], step: int) -> None:
        """Scalars at optimizer step ``step``, to the trackers and training.log."""
        self.recorder.log_values(values, step)

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
        # DDP's reducer holds the process group, which must not outlive its destruction
        # (distributed.stop): a gloo group freed at interpreter exit may abort the process.
        self.ddp = self.runner = self.eval_runner = None
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
        display = ProgressDisplay(self.console, self.logger, self.state.total_steps, progress.step)
        with self._outcome_recorded():
            self.stopper.agree()  # a signal that came after the run directory was set up
            self.stopper.raise_if_stopped_in_set_up()
            self.events.emit("fit_start")
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
        config, state, progress = self.config, self.state, self.state.progress
        for epoch_idx in range(progress.epoch, state.epochs):
            self.stopper.apply_runtime_settings()  # runtime.json, edited while training
            self.events.emit("epoch_start", epoch_idx)
            stop_reason = self._train_epoch(epoch_idx, display)
            if stop_reason:
                return stop_reason
            progress.epoch = epoch_idx + 1
            last = progress.epoch == state.epochs
            if config.eval_every_steps:
                due = last or progress.step % config.eval_every_steps == 0
            else:
                due = last or progress.epoch % config.eval_every == 0
            if due:
                self._evaluate(display)
            self._save(checkpoint.LAST)
            self.state.keep_epoch_copy(self.run_dir)
            self.events.emit("epoch_end", progress.epoch)
            self.stopper.agree()
            stop_reason = self._agreed_stop_request()
            if stop_reason:
                return stop_reason
            if not last:  # a stop after the last epoch: the run finished
                self._stop_if_requested()
        return None

    def _agreed_stop_request(self) -> str | None:
        """The stop a callback asked for, as rank 0 heard it (every rank takes its word: the
        callbacks that asked may run there only); logged once."""
        reason = self.dist.run_on_main(lambda: self.stopper.stop_request)
        if reason:
            self.logger.info("stopping early: %s", reason)
        return reason

    # --- evaluating, saving, stopping ----------------------------------------------------

    def _evaluate(self, display: ProgressDisplay) -> None:
        """Evaluate on the validation split, tell the listeners (the recorder writes the
        row, with the training losses' means since the last one), and keep the best
        checkpoint."""
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
        state.step_eval_schedulers(monitored)
        improved = progress.record_evaluation(monitored, config.monitor_mode)
        train_values = {f"train_{name}": value for name, value in self._train_means().items()}
        progress.start_train_interval()
        row = {
            "epoch": progress.epoch,
            "step": progress.step,
            **state.lr_columns(),
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

    def _train_means(self) -> dict[str, float]:
        """The training losses' and metrics' means since the last evaluation."""
        progress = self.state.progress
        means = progress.train_mean_losses()
        for name, (total, count) in progress.train_metric_sums.items():
            means[name] = self.metrics[name].finalize(total, count)
        return means

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
