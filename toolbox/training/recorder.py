"""What a run writes about itself, by the one rank that writes.

The run's own record is always written: metrics.csv, training.log, run.json, curves.png
and a model's figures as PNGs. The loggers --loggers names (toolbox.loggers: TensorBoard,
MLflow, W&B) get the same values through their sinks; one that fails is warned about once
and left out, and the run goes on. A rank that does not write holds a NullRecorder, whose
every call does nothing, so that no caller asks which rank it is on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

import torch
from rich.console import Console

from toolbox.config.plain import flat, to_plain
from toolbox.config.training import TrainingConfig
from toolbox.loggers import Sink, TrackedRun
from toolbox.loggers.tensorboard import TensorBoardSink
from toolbox.records import checkpoint, curves, tensorboard
from toolbox.records.atomic import write_json
from toolbox.records.durations import format_duration
from toolbox.records.environment import environment
from toolbox.records.layout import ENV, LOG, RUNTIME
from toolbox.records.layout import METRICS as METRICS_FILE
from toolbox.records.log import describe_run, save_config, setup_logging
from toolbox.records.metrics_table import MetricsTable
from toolbox.records.run_record import RunRecord
from toolbox.training.build import Parts
from toolbox.training.distributed import Distributed
from toolbox.training.events import Listener
from toolbox.training.state import RunState
from toolbox.training.steps import draw_figures


class NullRecorder(Listener):
    """The recorder of a rank that does not write: the same calls, doing nothing."""

    writer = None
    run_id: str | None = None

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def step_loss(self, loss: float, step: int) -> None:
        pass

    def log_values(self, values: dict[str, float], step: int) -> None:
        pass

    def histograms(
        self, model: torch.nn.Module, epoch: int, grad_scale: Callable[[], float]
    ) -> None:
        pass

    def draw_figures(self, model: torch.nn.Module, epoch: int) -> None:
        pass

    def end_of_run(self) -> None:
        """The curves' last drawing and the final values, once the last epoch is done."""

    def redraw_curves(self) -> None:
        pass

    def close(self) -> None:
        pass


class Recorder(NullRecorder):
    """The run's record (metrics.csv, training.log, run.json, curves.png) and its loggers'
    sinks, by logger name."""

    def __init__(
        self,
        config: TrainingConfig,
        logger: logging.Logger,
        table: MetricsTable,
        record: RunRecord,
        plotter: curves.CurvesPlotter,
        sinks: dict[str, Sink],
        state: RunState,
        test_command: str,
    ) -> None:
        super().__init__(logger)
        self.config, self.table, self.record, self.plotter = config, table, record, plotter
        self.sinks = sinks
        self.writer = next(
            (sink.writer for sink in sinks.values() if isinstance(sink, TensorBoardSink)), None
        )
        """The TensorBoard logger's writer, for code that adds to it (None without one)."""
        self.run_id = record.run_id
        self.status = "failed"
        """How the session ended, for the trackers: set by end_of_run and on_fit_end."""
        self.state, self.test_command = state, test_command
        self.last_values: dict[str, float] = {}
        """The last evaluation's val_* values, for the end-of-run hyper-parameters."""

    def on_evaluation_end(self, row: dict[str, float | int], improved: bool) -> None:
        self.table.append(row)
        self._fan_out("evaluation", row)
        self.last_values = {key: value for key, value in row.items() if key.startswith("val_")}
        # The last evaluation's drawing starts now, while the last checkpoints are written.
        state = self.state
        self.plotter.update(force=row["step"] >= state.total_steps)
        values = {key: value for key, value in row.items() if key.startswith(("train_", "val_"))}
        by_steps = self.config.eval_every_steps or self.config.max_steps
        self.logger.info(
            "%s %d/%d %s lr %.3g%s",
            "step" if by_steps else "epoch",
            row["step"] if by_steps else row["epoch"],
            state.total_steps if by_steps else state.epochs,
            " ".join(f"{name} {value:.4f}" for name, value in values.items()),
            row["lr"],
            " (best)" if improved else "",
        )
        progress = self.state.progress
        self.record.progress(
            progress.epoch, progress.best_value, progress.best_epoch, row["elapsed_s"]
        )

    def on_fit_end(self, status: str, reason: str | None, error: str | None) -> None:
        self.status = status
        self.record.finish(status, error=error, reason=reason)
        if status != "finished":
            return
        progress, best = self.state.progress, self.state.progress.best_value
        length = f"{progress.epoch} epochs"
        if self.config.max_steps:
            length = f"{progress.step} steps ({length})"
        self.logger.info(
            "done: %s in %s; best %s %s at epoch %s. Evaluate on the test split with: %s",
            length,
            format_duration(progress.elapsed_s),
            self.config.monitor,
            "n/a" if best is None else f"{best:.4f}",
            progress.best_epoch,
            self.test_command,
        )

    def step_loss(self, loss: float, step: int) -> None:
        self._fan_out("step_loss", loss, step)

    def log_values(self, values: dict[str, float], step: int) -> None:
        """A callback's scalars: to every tracker, and a line in training.log."""
        self._fan_out("scalars", values, step)
        shown = " ".join(f"{name} {value:.4g}" for name, value in values.items())
        self.logger.info("step %d %s", step, shown, extra={"file_only": True})

    def histograms(
        self, model: torch.nn.Module, epoch: int, grad_scale: Callable[[], float]
    ) -> None:
        """``grad_scale`` is called here only: reading the scale is a host sync."""
        if self.sinks:
            self._fan_out("histograms", model, epoch, grad_scale())

    def draw_figures(self, model: torch.nn.Module, epoch: int) -> None:
        """The figures of a model that draws some (e.g. a diffusion model's samples), once
        per evaluation: only this rank pays for drawing them."""
        figures = draw_figures(model)
        if figures:
            tensorboard.save_figures(self.record.run_dir, figures)  # whatever the loggers
            self._fan_out("figures", figures, epoch, self.state.progress.step)

    def show_samples(self, splits) -> None:
        """A grid of the first training images (for image datasets), at step 0."""
        info = splits.info
        if self.sinks and len(info.input_shape) == 3:
            grid = tensorboard.sample_grid(splits.first_inputs(64), info.mean, info.std)
            if grid is not None:
                self._fan_out("images", {"samples/train": grid}, 0)

    def end_of_run(self) -> None:
        self.redraw_curves()
        progress = self.state.progress
        final = {**self.last_values, f"best_{self.config.monitor}": progress.best_value}
        final = {key: value for key, value in final.items() if value is not None}
        self.status = "finished"
        self._fan_out("end_of_run", to_plain(self.config), final, progress.epoch)

    def redraw_curves(self) -> None:
        """Draw curves.png from the whole table and wait for it: once the run is recorded
        as ended, its picture is complete."""
        self.plotter.update(force=True)
        self.plotter.finish()

    def close(self) -> None:
        self.plotter.finish()  # a failed run's last drawing, if one is still on its way
        self._fan_out("close", self.status)

    def _fan_out(self, call: str, *args) -> None:
        """``call`` on every sink. One that raises (its tracking server is gone, its disk is
        full) is warned about once and left out from then on: the run's own record has
        everything, and a tracker is not worth stopping the training for."""
        for name, sink in list(self.sinks.items()):
            try:
                getattr(sink, call)(*args)
            except Exception as error:
                del self.sinks[name]
                self.logger.warning(
                    "--loggers %s failed (%s: %s); the run goes on without it (metrics.csv, "
                    "training.log and run.json record everything)",
                    name,
                    type(error).__name__,
                    error,
                )
                if call != "close":
                    with suppress(Exception):  # what it holds open, if it still can
                        sink.close("failed")


def open_recorder(
    run_dir: Path,
    config: TrainingConfig,
    state: RunState,
    parts: Parts,
    *,
    dist: Distributed,
    console: Console,
    command: list[str] | None,
    loss_names: tuple[str, ...],
    resumed: bool,
    notes: list[str],
    test_command: str,
) -> NullRecorder:
    """The log on every rank; and on rank 0 the run's records, started or continued (on
    resume, metrics.csv's rows after the checkpoint are dropped), and its sinks.
    ``test_command`` is the command the last line says evaluates the run."""
    logger = setup_logging(run_dir / LOG if dist.is_main else None, console, console.is_terminal)
    if not dist.is_main:
        return NullRecorder(logger)
    record = _start_record(run_dir, config, state, parts, logger, command, resumed)
    columns = metrics_columns(config, loss_names, parts.metrics, state.lr_columns())
    table = MetricsTable(run_dir / METRICS_FILE, columns)
    progress = state.progress
    if resumed:
        for stale in checkpoint.remove_stale_temporaries(run_dir):
            logger.info("removed %s, left by an interrupted write", stale.name)
        # Rows and points written after the checkpoint was taken would be repeated.
        table.drop_rows_after(progress.step)
    sinks = _open_sinks(run_dir, config, record, logger, progress.step if resumed else None)
    plotter = curves.CurvesPlotter(
        table.path,
        run_dir / curves.CURVES,
        title=run_dir.name,
        higher_is_better={name: metric.higher_is_better for name, metric in parts.metrics.items()},
        background=True,  # drawn in a child process: the loop pays one line on a pipe
    )
    recorder = Recorder(config, logger, table, record, plotter, sinks, state, test_command)
    if not resumed:
        recorder.show_samples(parts.splits)
    for note in notes:
        logger.info("%s", note)
    if dist.enabled:
        logger.info(
            "distributed: %d processes (%s); batch size %d per process, %d in all%s",
            dist.world_size,
            dist.backend,
            config.batch_size,
            config.batch_size * dist.world_size,
            f" (x{config.grad_accum} accumulated per step)" if config.grad_accum > 1 else "",
        )
    return recorder


def _open_sinks(
    run_dir: Path,
    config: TrainingConfig,
    record: RunRecord,
    logger: logging.Logger,
    resumed_step: int | None,
) -> dict[str, Sink]:
    """The sinks of the loggers --loggers names, each continuing its tracker's run when the
    run is resumed; their ids go to run.json. One that cannot start is warned about and left
    out (its store was checked before the run began)."""
    params = flat(to_plain(config))
    sinks = {}
    for logger_config in config.logger_configs:
        name = logger_config.registered_name
        run = TrackedRun(
            run_dir, params, config.notes, config.tags, resumed_step, record.tracker_state(name)
        )
        try:
            sinks[name] = logger_config.build(run)
        except Exception as error:
            logger.warning(
                "--loggers %s could not start (%s: %s); the run goes on without it",
                name,
                type(error).__name__,
                error,
            )
    states = {name: sink.state() for name, sink in sinks.items()}
    if any(states.values()):
        record.set_trackers({name: state for name, state in states.items() if state})
    return sinks


def _start_record(
    run_dir: Path,
    config: TrainingConfig,
    state: RunState,
    parts: Parts,
    logger: logging.Logger,
    command: list[str] | None,
    resumed: bool,
) -> RunRecord:
    """config.json, run.json (a new session), runtime.json and env.json (unless there),
    and the log's header."""
    save_config(run_dir, config)
    env = environment(parts.device)
    record = RunRecord(run_dir)
    record.start(config, command, env["git"], state.epochs)
    progress, loader = state.progress, state.train_loader
    if not (run_dir / RUNTIME).exists():
        write_json(run_dir / RUNTIME, {"lr_scale": progress.lr_scale})
    if not (run_dir / ENV).exists():
        write_json(run_dir / ENV, env)
    describe_run(
        logger,
        run_dir,
        config,
        state.model,
        parts.splits,
        env,
        resumed_at=(progress.epoch, loader.next_batch, len(loader)) if resumed else None,
        skipped_init_keys=parts.skipped_init_keys,
    )
    return record


def metrics_columns(
    config: TrainingConfig,
    loss_names: tuple[str, ...],
    metrics,
    lr_columns: Iterable[str],
) -> list[str]:
    """metrics.csv's header: epoch, step, lr (and lr_<name> per optimizer when a model has
    several: RunState.lr_columns), train_ and val_ losses, val_ metrics, ..."""
    columns = ["epoch", "step", *lr_columns]
    columns += [f"train_{name}" for name in (*loss_names, *train_metric_names(config, metrics))]
    columns += [f"val_{name}" for name in (*loss_names, *metrics)]
    columns += ["nan_skips"] if config.nan_policy == "skip" else []
    return columns + ["elapsed_s"]


def train_metric_names(config: TrainingConfig, metrics: dict) -> list[str]:
    """The --metrics scored on training batches too (--train-metrics): those that are a sum
    and a count over samples; the others (AUROC, F1) need the whole split at once."""
    if not config.train_metrics:
        return []
    return [name for name, metric in metrics.items() if metric.is_sum_over_samples]
