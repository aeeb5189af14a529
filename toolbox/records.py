"""Pictures of a run: ``curves.png`` from ``metrics.csv``, and TensorBoard extras (hyper-
parameters, weight and gradient histograms, a grid of training samples).

Nothing heavy is imported at module level: matplotlib (Agg, through ``Figure`` and
``FigureCanvasAgg``, never pyplot) and torch are imported inside the functions.
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import torch
    from torch.utils.tensorboard import SummaryWriter

CURVES = "curves.png"
FIRST_DRAW_S = 1.5

# Metrics for which a lower value is better; any other name (accuracy, top5, ...) is taken
# as higher-is-better unless ``higher_is_better`` says otherwise.
_LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "error", "err", "nll", "perplexity", "ece")


# --- curves.png --------------------------------------------------------------------------


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


def write_figures(writer: SummaryWriter, run_dir: Path, figures: Mapping, step: int) -> None:
    """A model's figures, each an image tensor (C, H, W) in [0, 1] or a matplotlib figure,
    to TensorBoard under ``figures/<name>`` and to ``<run_dir>/<name>.png``."""
    import torch
    from torchvision.utils import save_image

    for name, figure in figures.items():
        png = run_dir / f"{name}.png"
        if isinstance(figure, torch.Tensor):
            image = figure.detach().float().cpu().clamp(0, 1)
            writer.add_image(f"figures/{name}", image, step, dataformats="CHW")
            _write_atomically(png, lambda file, image=image: save_image(image, file, format="png"))
        else:
            _write_atomically(
                png, lambda file, figure=figure: figure.savefig(file, format="png", dpi=100)
            )
            writer.add_figure(f"figures/{name}", figure, step)  # and closes it
    writer.flush()


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


# --- TensorBoard -------------------------------------------------------------------------


def flatten_hparams(config_plain: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as ``{"optim.lr": 0.001, ...}`` with values TensorBoard takes:
    bool, int, float and str as they are; lists and tuples as JSON text; None as "None";
    anything else as ``str()``."""
    from toolbox.config import flat

    def tensorboard_value(value: Any) -> Any:
        if value is None:
            return "None"
        if isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return json.dumps(value, default=str)
        return str(value)

    return {
        key: tensorboard_value(value) for key, value in flat(dict(config_plain), prefix).items()
    }


def log_hparams(
    writer: SummaryWriter,
    config_plain: Mapping[str, Any],
    final_metrics: Mapping[str, float],
    step: int = 0,
) -> None:
    """Record the run's hyper-parameters and final metrics for TensorBoard's HPARAMS tab,
    in the writer's own run directory (no sub-directory, no second events file).

    ``config_plain`` is ``toolbox.config.to_plain(config)``; its keys are flattened to
    ``optim.lr``-style names (see ``flatten_hparams``). ``final_metrics`` (e.g.
    ``{"val_loss": 0.31, "best_val_accuracy": 0.97}``) are written as scalars tagged
    ``hparam/<name>`` at ``step`` (a name that already holds a "/" is kept as it is).

    The HPARAMS tab lists every run that has the hyper-parameters, with the last value of
    each of its scalars as the metric columns (so ``val/accuracy`` etc. appear too). No
    experiment summary is written: TensorBoard then builds the columns from all runs under
    ``--logdir``, so runs with different options (another arch's ``model.*``) still compare.
    TensorBoard keeps the first hyper-parameters written into a run: call this once per run
    (a resumed run calling it again updates the metrics but not the hyper-parameters shown).
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboard.plugins.hparams.api_pb2 import Status

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in flatten_hparams(config_plain).items():
        if isinstance(value, bool):  # before int: bool is an int
            start.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = float(value)
        else:
            start.hparams[name].string_value = value
    end = plugin_data_pb2.SessionEndInfo(
        status=Status.Value("STATUS_SUCCESS"), end_time_secs=time.time()
    )
    summary = Summary()
    for tag, data in (
        (
            metadata.SESSION_START_INFO_TAG,
            plugin_data_pb2.HParamsPluginData(session_start_info=start),
        ),
        (metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ):
        summary.value.add(
            tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR
        )
    # SummaryWriter has no public call for a ready-made Summary; its add_* methods use this.
    writer._get_file_writer().add_summary(summary, step)
    for name, value in final_metrics.items():
        writer.add_scalar(name if "/" in name else f"hparam/{name}", float(value), step)
    writer.flush()


def log_histograms(
    writer: SummaryWriter,
    model: torch.nn.Module,
    epoch: int,
    *,
    bins: int = 64,
    grad_scale: float = 1.0,
) -> int:
    """Histograms of every parameter, tagged ``weights/<name>``, and of every gradient that
    is present (``p.grad`` is not None), tagged ``grads/<name>``, at step ``epoch``.

    Each histogram has ``bins`` equal buckets between the tensor's finite min and max; NaN
    and inf values are left out of every statistic. They are computed where the tensors
    live (``torch.histc``): a GPU model is not copied to the host, only its statistics are
    (one small read per tensor). Gradients are divided by ``grad_scale`` (pass
    ``GradScaler.get_scale()`` while they are still scaled, under fp16). A torch.compile
    prefix ``_orig_mod.`` is dropped from the names. Returns the number of histograms
    written (a tensor with no finite value is skipped).
    """
    import torch

    tensors: list[tuple[str, torch.Tensor]] = []
    for name, parameter in model.named_parameters():
        name = name.replace("_orig_mod.", "")
        tensors.append((f"weights/{name}", parameter))
        if parameter.grad is not None:
            tensors.append((f"grads/{name}", parameter.grad))

    summaries = []  # (tag, min, max, num, sum, sum of squares, left, right)
    counts = []
    with torch.no_grad():
        for tag, tensor in tensors:
            values = tensor.detach().flatten().float()
            if tag.startswith("grads/") and grad_scale != 1.0:
                values = values / grad_scale
            if values.numel() == 0:
                continue
            low, high = torch.aminmax(values)
            stats = torch.stack([low, high, values.sum(), torch.dot(values, values)])
            low, high, total, squares = stats.tolist()
            num = values.numel()
            if not math.isfinite(total + squares):  # a NaN or inf (or an overflow) in it
                values = values[torch.isfinite(values)]
                num = values.numel()
                if num == 0:
                    continue
                low, high = (value.item() for value in torch.aminmax(values))
                total, squares = values.double().sum().item(), values.double().square().sum().item()
            # A constant tensor gets a unit-wide range around its value.
            left, right = (low, high) if high > low else (low - 0.5, high + 0.5)
            counts.append(torch.histc(values, bins, left, right))
            summaries.append((tag, low, high, num, total, squares, left, right))
        table = torch.stack(counts).cpu().tolist() if counts else []

    for (tag, low, high, num, total, squares, left, right), row in zip(
        summaries, table, strict=True
    ):
        width = (right - left) / bins
        limits = [left + width * (i + 1) for i in range(bins)]
        writer.add_histogram_raw(tag, low, high, num, total, squares, limits, row, epoch)
    return len(summaries)


def log_sample_grid(
    writer: SummaryWriter,
    inputs: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    step: int = 0,
    *,
    tag: str = "samples/train",
    max_samples: int = 64,
    normalized: bool = False,
    min_size: int = 32,
) -> bool:
    """A grid of up to ``max_samples`` images (8 a row) under ``tag``, for image datasets.

    ``inputs`` is (N, C, H, W) with C 1 or 3, in the dataset's stored units (uint8 pixels or
    floats; pass ``normalized=True`` for batches already turned into ``(x - mean) / std``).
    ``mean`` and ``std`` are ``DatasetInfo.mean``/``.std`` (per channel, or one value), in
    stored units. Display range: one window for all channels, ``mean +- 3 std`` cut to the
    batch's min and max, mapped to [0, 1]: for pixels that is their own full range (0-255
    for MNIST and CIFAR, 0-16 for the 8x8 digits); unbounded floats are clipped at 3 std.
    Images smaller than ``min_size`` pixels are enlarged by an integer factor (nearest
    neighbour) so that the grid is legible. Returns False, writing nothing, for inputs that
    are not such images.
    """
    import torch
    from torchvision.utils import make_grid

    if inputs.ndim != 4 or inputs.shape[1] not in (1, 3) or inputs.shape[0] == 0:
        return False
    images = inputs[:max_samples].detach().to("cpu", torch.float32)
    channels = images.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
    if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels):
        raise ValueError(
            f"mean {tuple(mean)} and std {tuple(std)} need 1 or {channels} values each"
        )
    if normalized:
        images = images * std_t.reshape(1, -1, 1, 1) + mean_t.reshape(1, -1, 1, 1)
    finite = images[torch.isfinite(images)]
    if finite.numel() == 0:
        return False
    low = max(float(finite.min()), float((mean_t - 3 * std_t).min()))
    high = min(float(finite.max()), float((mean_t + 3 * std_t).max()))
    if not high > low:  # constant images, or a degenerate std
        low, high = float(finite.min()), float(finite.max())
    if high > low:
        images = ((images - low) / (high - low)).clamp(0, 1)
    else:
        images = torch.full_like(images, 0.5)
    images = torch.nan_to_num(images, nan=0.0)
    factor = math.ceil(min_size / min(images.shape[-2:]))
    if factor > 1:
        images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    grid = make_grid(images, nrow=8, padding=2, pad_value=1.0)
    writer.add_image(tag, grid, step, dataformats="CHW")
    writer.flush()
    return True
