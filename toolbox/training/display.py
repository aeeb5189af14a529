"""Live progress: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import time

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# The one duration format (records/ is the layer below); the trainer imports it from here too.
from toolbox.records.durations import format_duration

REFRESH_SECONDS = 0.25
RECENT_EVALUATIONS = 5


class _ProgressWithRecent(Progress):
    """The bar, under a table of the last few evaluations."""

    def __init__(self, *columns, **options) -> None:
        self.recent: list[dict[str, str]] = []  # set first: the base class renders at once
        super().__init__(*columns, **options)

    def get_renderables(self):
        if self.recent:
            table = Table(box=box.SIMPLE, padding=(0, 1), show_edge=False)
            for column in self.recent[-1]:
                table.add_column(column, justify="right")
            for row in self.recent[-RECENT_EVALUATIONS:]:
                table.add_row(*row.values())
            yield table
        yield self.make_tasks_table(self.tasks)


class ProgressDisplay:
    """Shows epoch, step, loss, latest validation metrics, throughput and ETA.

    ``advance`` runs every optimizer step and touches no tensor; ``report`` runs once per
    logging interval with values the caller has already synced to the host.
    """

    def __init__(
        self, console: Console, logger: logging.Logger, total_steps: int, done_steps: int
    ) -> None:
        self.logger = logger
        self.total_steps = total_steps
        self.start_steps = done_steps
        self.steps = done_steps
        self.started = time.perf_counter()
        self.live = console.is_terminal
        self.fields = {"epoch": "", "loss": "", "metrics": "", "speed": ""}
        self.progress = None
        self.last_refresh = 0.0
        if self.live:
            self.progress = _ProgressWithRecent(
                TextColumn("[bold]{task.fields[epoch]}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[loss]} {task.fields[metrics]} {task.fields[speed]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                # No refresh thread: on few cores it preempts torch's worker threads and
                # slows small steps many times over. advance() refreshes on the main thread.
                auto_refresh=False,
            )
            self.task = self.progress.add_task(
                "train", total=total_steps, completed=done_steps, **self.fields
            )

    def __enter__(self) -> ProgressDisplay:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.progress is not None:
            self.progress.stop()

    def advance(self) -> None:
        self.steps += 1
        if self.progress is not None:
            self.progress.update(self.task, advance=1)
            now = time.perf_counter()
            if now - self.last_refresh > REFRESH_SECONDS:
                self.progress.refresh()
                self.last_refresh = now

    def eta_seconds(self) -> float:
        done = self.steps - self.start_steps
        if done == 0:
            return float("nan")
        return (time.perf_counter() - self.started) / done * (self.total_steps - self.steps)

    def report(
        self, epoch: str, loss: float, samples_per_s: float, metrics: dict[str, float] | None = None
    ) -> None:
        """The last --log-every interval's mean loss and training metrics (moving averages
        over the interval), and its speed."""
        shown = "".join(f" {name} {value:.4f}" for name, value in (metrics or {}).items())
        self.fields.update(
            epoch=epoch, loss=f"loss {loss:.4f}{shown}", speed=f"{samples_per_s:,.0f} samples/s"
        )
        if self.progress is not None:
            self.progress.update(self.task, **self.fields, refresh=True)
        # On a terminal the bar shows this; the log file (and a non-terminal) get the line.
        self.logger.info(
            "%s step %d/%d %s %s%s eta %s",
            epoch,
            self.steps,
            self.total_steps,
            self.fields["loss"],
            self.fields["speed"],
            f" {self.fields['metrics']}" if self.fields["metrics"] else "",
            format_duration(self.eta_seconds()) if self.steps > self.start_steps else "?",
            extra={"progress": True},
        )

    def show_evaluation(self, row: dict[str, float | int], improved: bool) -> None:
        """An evaluation's results: into the bar's text and the table of recent ones."""
        values = {k: v for k, v in row.items() if k.startswith("val_")}
        self.fields["metrics"] = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        if self.progress is not None:
            cells = {
                key: f"{value:.4g}" if isinstance(value, float) else str(value)
                for key, value in row.items()
            }
            cells["best"] = "*" if improved else ""
            self.progress.recent.append(cells)
            self.progress.update(self.task, metrics=self.fields["metrics"], refresh=True)
