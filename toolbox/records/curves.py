"""``curves.png``, drawn from ``metrics.csv`` (matplotlib imported inside the functions)."""

from __future__ import annotations

import csv
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from toolbox.records.layout import CURVES  # noqa: F401 - the file this module draws

if TYPE_CHECKING:
    pass


FIRST_DRAW_S = 1.5


# Metrics for which a lower value is better; any other name (accuracy, top5, ...) is taken
# as higher-is-better unless ``higher_is_better`` says otherwise.
_LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "error", "err", "nll", "perplexity", "ece")


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


def _higher_is_better(metric: str, overrides: Mapping[str, bool] | None) -> bool:
    if overrides and metric in overrides:
        return bool(overrides[metric])
    name = metric.lower()
    return not any(name == word or name.endswith(f"_{word}") for word in _LOWER_IS_BETTER)


def _best_index(values: Sequence[float], higher: bool) -> int | None:
    finite = [(value, i) for i, value in enumerate(values) if math.isfinite(value)]
    if not finite:
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


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


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
    (one line each, its best point starred: lower is better for loss/mae/mse/rmse-like
    names, higher otherwise, or as ``higher_is_better`` maps the metric name, e.g.
    ``{"accuracy": True}``); the learning rate. The figure's title is ``title`` (default:
    the name of the csv's folder, i.e. the run), the last epoch and ``elapsed_s``.

    NaN or empty cells leave gaps; one row draws single points. The image is drawn to a
    temporary file beside ``png`` and renamed over it, so a viewer never sees half a file.
    Returns False (and writes nothing) when the csv has no rows yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics_csv, png = Path(metrics_csv), Path(png)
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
            higher = _higher_is_better(metric, higher_is_better)
            best = _best_index(values, higher)
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
        heading.append(_format_duration(elapsed[-1]))
    figure.suptitle("  \u00b7  ".join(heading))

    png.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(
        png,
        lambda file: figure.savefig(file, format="png", dpi=150, pil_kwargs={"compress_level": 1}),
    )
    return True


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temporary beside ``path``, then renamed over it: a reader
    never sees half a file."""
    # A unique temporary name: two writers never share one; the rename is atomic.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class CurvesPlotter:
    """Keeps ``curves.png`` up to date during training without slowing it down.

    ``update()`` after each evaluation redraws when at least ``min_interval_s`` have passed
    since the plotter was made or last drew, and drawing has cost at most ``max_share`` of
    the time between drawings; ``update(force=True)`` (the last evaluation) always draws.
    A failure is logged once on the ``toolbox`` logger and never raised: a picture must
    not stop a run.
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
    ) -> None:
        self.metrics_csv, self.png = Path(metrics_csv), Path(png)
        self.title, self.higher_is_better = title, higher_is_better
        self.min_interval_s, self.max_share = min_interval_s, max_share
        self.last_drawn = time.perf_counter()
        # Until a draw is measured, assume the first one's cost: it imports matplotlib
        # (about 1.2 s here), so a run's first redraw waits until that is under max_share.
        self.cost_s = FIRST_DRAW_S
        self.failed = False

    def update(self, force: bool = False) -> bool:
        """Redraw if it is time (or ``force``); True when ``png`` was written."""
        started = time.perf_counter()
        wait = max(self.min_interval_s, self.cost_s / self.max_share)
        if not force and started - self.last_drawn < wait:
            return False
        try:
            written = write_curves(
                self.metrics_csv,
                self.png,
                title=self.title,
                higher_is_better=self.higher_is_better,
            )
        except Exception as error:  # reported once, never fatal
            if not self.failed:
                import logging

                logging.getLogger("toolbox").info("could not draw %s: %s", self.png, error)
            self.failed = True
            return False
        self.last_drawn = time.perf_counter()
        self.cost_s = self.last_drawn - started
        return written
