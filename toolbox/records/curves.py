"""``curves.png``, drawn from ``metrics.csv`` (matplotlib imported inside the functions), in
this process or, for a trainer, in a child process (``toolbox.records.background``)."""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from toolbox.records.atomic import write_atomically
from toolbox.records.background import worker as background_worker
from toolbox.records.durations import format_duration
from toolbox.records.layout import CURVES  # noqa: F401 - the file this module draws

FIRST_DRAW_S = 1.5


def metric_directions(overrides: Mapping[str, bool] | None = None) -> dict[str, bool]:
    """Whether a higher value is better, per metric name: every metric of the metrics
    registry (its ``higher_is_better``), ``loss`` (the criterion's value, which training
    minimises) as lower-is-better, and ``overrides`` over them. Nothing is guessed from a
    name: a metric the registry does not know gets no best point."""
    from toolbox.metrics import METRICS

    directions = {name: bool(METRICS.get(name).higher_is_better) for name in METRICS.names()}
    return {**directions, "loss": False, **(overrides or {})}


def _read_columns(metrics_csv: Path) -> dict[str, list[float]]:
    """``metrics.csv`` as float columns; empty or unparsable cells become NaN."""
    with open(metrics_csv, newline="") as file:
        reader = csv.DictReader(file)
        columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames or []}
        for row in reader:
            for name, column in columns.items():
                try:
                    column.append(float(row.get(name) or "nan"))
                except ValueError:
                    column.append(math.nan)
    return columns


def _best_index(values: Sequence[float], higher: bool | None) -> int | None:
    """The index of the best finite value; None without one, or without a direction."""
    finite = [(value, i) for i, value in enumerate(values) if math.isfinite(value)]
    if not finite or higher is None:
        return None
    # The first epoch reaching the best value, as the trainer's model_best.pth.tar.
    best = max(finite, key=lambda item: (item[0], -item[1])) if higher else min(finite)
    return best[1]


def _wants_log_scale(values: Sequence[float], decades: float = 2.0) -> bool:
    """True when every finite value is positive and they span more than ``decades``."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite or min(finite) <= 0:
        return False
    return math.log10(max(finite) / min(finite)) > decades


def write_curves(
    metrics_csv: Path | str,
    png: Path | str,
    *,
    title: str | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> bool:
    """Draw ``metrics.csv`` into ``png`` (2070 x 600 px: 150 dpi), atomically.

    Panels, all against the epoch: the train and validation loss (log scale when they span
    more than two decades; the best validation loss starred); every ``val_<metric>`` column
    (one line each, its best point starred where its direction is known: as
    ``metric_directions(higher_is_better)`` says, i.e. the metrics registry, or
    ``higher_is_better`` where it maps the metric name, e.g. ``{"accuracy": True}``); the
    learning rate. The figure's title is ``title`` (default:
    the name of the csv's folder, i.e. the run), the last epoch and ``elapsed_s``.

    NaN or empty cells leave gaps; one row draws single points. The image is drawn to a
    temporary file beside ``png`` and renamed over it, so a viewer never sees half a file.
    Returns False (and writes nothing) when the csv has no rows yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics_csv, png = Path(metrics_csv), Path(png)
    directions = metric_directions(higher_is_better)
    columns = _read_columns(metrics_csv)
    epochs = columns.get("epoch", [])
    if not epochs:
        return False
    count = len(epochs)
    metric_names = [
        name.removeprefix("val_")
        for name in columns
        if name.startswith("val_") and name != "val_loss"
    ]
    marker = {"marker": "o", "markersize": 3.5} if count <= 60 else {}
    best_style = {"marker": "*", "markersize": 13, "zorder": 5, "linestyle": "none"}
    best_style |= {"markeredgecolor": "black", "markeredgewidth": 0.6}

    panels = 3 if metric_names else 2
    # Fixed margins, in inches, instead of a layout engine: it would measure every tick
    # label once more and double the drawing time; these leave room for ~7-character tick
    # labels beside each panel.
    width, height = 4.6 * panels, 4.0
    figure = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=True)
    panel_width = (width - 0.85 - 0.2 - 1.0 * (panels - 1)) / panels
    figure.subplots_adjust(
        left=0.85 / width,
        right=1 - 0.2 / width,
        bottom=0.55 / height,
        top=1 - 0.75 / height,
        wspace=1.0 / panel_width,
    )
    loss_axis, lr_axis = axes[0], axes[-1]

    # Panel 1: losses.
    plotted: list[float] = []
    for name, label, color in (("train_loss", "train", "C0"), ("val_loss", "val", "C1")):
        if name not in columns:
            continue
        values = columns[name]
        plotted += values
        best = _best_index(values, higher=False) if name == "val_loss" else None
        if best is not None:
            label += f" (best {values[best]:.4g} @ {epochs[best]:g})"
        loss_axis.plot(epochs, values, color=color, label=label, **marker)
        if best is not None:
            loss_axis.plot([epochs[best]], [values[best]], color=color, **best_style)
    if _wants_log_scale(plotted):
        loss_axis.set_yscale("log")
    skips = [value for value in columns.get("nan_skips", []) if math.isfinite(value)]
    skipped = f" ({int(skips[-1])} batches skipped)" if skips and skips[-1] > 0 else ""
    loss_axis.set_title("Loss" + skipped)
    loss_axis.set_ylabel("loss")

    # Panel 2: validation metrics.
    if metric_names:
        metric_axis = axes[1]
        for index, metric in enumerate(metric_names):
            values = columns[f"val_{metric}"]
            best = _best_index(values, directions.get(metric))
            label = metric
            if best is not None:
                label += f" (best {values[best]:.4g} @ {epochs[best]:g})"
            color = f"C{index + 2}"
            metric_axis.plot(epochs, values, color=color, label=label, **marker)
            if best is not None:
                metric_axis.plot([epochs[best]], [values[best]], color=color, **best_style)
        metric_axis.set_title("Validation metrics (\u2605 best)")
        metric_axis.set_ylabel("value")

    # Panel 3: learning rate.
    lrs = columns.get("lr", [math.nan] * count)
    lr_axis.plot(epochs, lrs, color="C7", **marker)
    if _wants_log_scale(lrs):
        lr_axis.set_yscale("log")
    else:  # short tick labels: 1.2 with "1e-4" above the axis, not 0.00012
        lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 4))
    lr_axis.set_title("Learning rate (after the epoch)")
    lr_axis.set_ylabel("lr")

    finite_epochs = [epoch for epoch in epochs if math.isfinite(epoch)]
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if finite_epochs and max(finite_epochs) - min(finite_epochs) < 2:
            axis.set_xlim(min(finite_epochs) - 1, max(finite_epochs) + 1)  # not 0.95..1.05
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")

    heading = [title if title is not None else metrics_csv.resolve().parent.name]
    if finite_epochs:
        heading.append(f"epoch {max(finite_epochs):g}")
    elapsed = [value for value in columns.get("elapsed_s", []) if math.isfinite(value)]
    if elapsed:
        heading.append(format_duration(elapsed[-1]))
    figure.suptitle("  \u00b7  ".join(heading))

    png.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(
        png,
        lambda file: figure.savefig(file, format="png", dpi=150, pil_kwargs={"compress_level": 1}),
    )
    return True


def warm_up() -> None:
    """Import matplotlib and draw a small figure, so that the next drawing costs no more than
    any later one (the background worker calls it when it starts)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator  # noqa: F401 - imported for write_curves

    figure = Figure(figsize=(2, 1), dpi=50)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    axis.plot([1, 2], [1, 0.5], marker="*", label="x")
    axis.legend(fontsize="small")
    figure.suptitle("warm-up")
    figure.savefig(io.BytesIO(), format="png", pil_kwargs={"compress_level": 1})
    metric_directions()  # and the registry, which write_curves reads


def start_drawer() -> bool:
    """Start this process's background drawer now, if it is not running: the child process
    that ``CurvesPlotter(background=True)`` sends its drawings to. Call it as early as
    possible, once the run is sure to start (after parsing, before torch is imported and the
    data and model are built): it then imports matplotlib on another core while this process
    is busy with single-threaded work, not while it trains. Torch-free, a few milliseconds,
    idempotent; under torchrun only rank 0 (``RANK``) starts one, since only it draws. True
    when it runs; it never raises (without it, plotters draw in-process)."""
    if os.environ.get("RANK", "0") != "0":
        return False
    return background_worker(__name__) is not None


class CurvesPlotter:
    """Keeps ``curves.png`` up to date during training without slowing it down.

    ``update()`` after each evaluation redraws when at least ``min_interval_s`` have passed
    since the plotter was made or last drew, and drawing has cost at most ``max_share`` of
    the time between drawings; ``update(force=True)`` (the last evaluation) always draws,
    unless ``metrics.csv`` is unchanged since the last drawing (which is then current). A
    failure is logged once on the ``toolbox`` logger and never raised: a picture must not
    stop a run.

    ``background=True`` draws in a child process (see ``start_drawer``): ``update`` then
    only sends the request (True: one was sent), and ``finish()`` waits for the drawings
    sent. Where no child process can run (or it died), the plotter draws in-process. A
    metric's best point follows ``metric_directions(higher_is_better)``, the registry's.
    """

    def __init__(
        self,
        metrics_csv: Path | str,
        png: Path | str,
        *,
        title: str | None = None,
        higher_is_better: Mapping[str, bool] | None = None,
        min_interval_s: float = 10.0,
        max_share: float = 0.05,
        background: bool = False,
    ) -> None:
        self.metrics_csv, self.png = Path(metrics_csv), Path(png)
        # Resolved here, whole: the child process then never reads the registry.
        self.title, self.directions = title, metric_directions(higher_is_better)
        self.min_interval_s, self.max_share = min_interval_s, max_share
        self.last_drawn = time.perf_counter()
        # Until a draw is measured, assume the first one's cost: it imports matplotlib
        # (about 1.2 s here), so a run's first redraw waits until that is under max_share.
        self.cost_s = FIRST_DRAW_S
        self.failed = False
        self.current = False
        """Whether the last drawing finished wrote ``png``."""
        self._worker = background_worker(__name__) if background else None
        # The files it was made for, wherever the working directory goes (the drawer's stays
        # where it started).
        self._absolute = (self.metrics_csv.absolute(), self.png.absolute())
        if self.title is None:
            self.title = self._absolute[0].resolve().parent.name  # as write_curves' default
        self._pending: list[int] = []
        self._drawn: tuple[int, int, int] | None = None  # metrics.csv when last drawn
        self._lost = False  # a drawing was sent to a drawer that died

    def update(self, force: bool = False) -> bool:
        """Redraw if it is time (or ``force``); True when ``png`` was written (or, in the
        background, a drawing of it requested)."""
        self._collect()
        started = time.perf_counter()
        wait = max(self.min_interval_s, self.cost_s / self.max_share)
        if not force and started - self.last_drawn < wait:
            return False
        state = self._csv_state()
        if (
            state is not None
            and state == self._drawn
            and (self._pending or self._absolute[1].exists())
        ):
            return False  # drawn from this very table already
        if self._worker is not None:
            if self._pending and not force:
                return False  # the last one is still being drawn
            number = self._worker.submit(
                "write_curves",
                metrics_csv=str(self._absolute[0]),
                png=str(self._absolute[1]),
                title=self.title,
                higher_is_better=self.directions,
            )
            if number is not None:
                self._pending.append(number)
                self._drawn, self.last_drawn = state, started
                return True
            self._worker = None  # its process is gone: draw here from now on
        try:
            written = write_curves(
                *self._absolute, title=self.title, higher_is_better=self.directions
            )
        except Exception as error:  # reported once, never fatal
            self._failed(str(error))
            return False
        self.last_drawn = time.perf_counter()
        self.cost_s = self.last_drawn - started
        self._drawn, self.current = (state if written else None), written
        return written

    def finish(self, timeout: float = 60.0) -> bool:
        """Wait (up to ``timeout`` seconds) for the drawings requested in the background;
        True when ``png`` is then as the last drawing left it, written. Call it before the
        run ends; without ``background`` it returns at once."""
        self._collect(timeout)
        if self._pending:
            logging.getLogger("toolbox").info(
                "%s is still being drawn after %.0f s; it will be complete shortly",
                self.png,
                timeout,
            )
            return False
        if self._lost:  # the drawer died before answering: draw here
            self._lost = False
            self.update(force=True)
        return self.current

    def _collect(self, timeout: float = 0.0) -> None:
        """Take the answers that have come (waiting up to ``timeout`` for all of them)."""
        deadline = time.perf_counter() + timeout
        while self._pending and self._worker is not None:
            answer = self._worker.answer(self._pending[0], max(deadline - time.perf_counter(), 0))
            if answer is None:
                if not self._worker.alive:  # it died: what it was sent is drawn here
                    self._pending.clear()
                    self._worker, self._drawn, self._lost = None, None, True
                return
            self._pending.pop(0)
            self.cost_s = float(answer.get("seconds", self.cost_s))
            if "error" in answer:
                self._failed(answer["error"])
            else:
                self.current = bool(answer.get("result"))
                if not self.current:
                    self._drawn = None

    def _failed(self, error: str) -> None:
        if not self.failed:
            logging.getLogger("toolbox").info("could not draw %s: %s", self.png, error)
        self.failed, self.current, self._drawn = True, False, None

    def _csv_state(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self._absolute[0])
        except OSError:
            return None
        return status.st_ino, status.st_size, status.st_mtime_ns
