"""TensorBoard extras: figures, hyper-parameters, weight and gradient histograms, a grid of
training samples (torch imported inside the functions). The tensorboard logger
(toolbox.loggers.tensorboard) writes through them."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolbox.records.atomic import write_atomically

if TYPE_CHECKING:
    import torch
    from torch.utils.tensorboard import SummaryWriter


def write_figures(writer: SummaryWriter, run_dir: Path, figures: Mapping, step: int) -> None:
    """A model's figures, each an image tensor (C, H, W) in [0, 1] or a matplotlib figure,
    to ``<run_dir>/<name>.png`` and to TensorBoard under ``figures/<name>``."""
    save_figures(run_dir, figures)
    add_figures(writer, figures, step)


def save_figures(run_dir: Path, figures: Mapping) -> None:
    """Each of a model's figures (an image tensor or a matplotlib figure) as
    ``<run_dir>/<name>.png``."""
    import torch
    from torchvision.utils import save_image

    for name, figure in figures.items():
        png = run_dir / f"{name}.png"
        if isinstance(figure, torch.Tensor):
            image = figure.detach().float().cpu().clamp(0, 1)
            write_atomically(png, lambda file, image=image: save_image(image, file, format="png"))
        else:
            write_atomically(
                png, lambda file, figure=figure: figure.savefig(file, format="png", dpi=100)
            )


def add_figures(writer: SummaryWriter, figures: Mapping, step: int) -> None:
    """Each of a model's figures to TensorBoard under ``figures/<name>`` (a matplotlib
    figure is closed: save it before)."""
    import torch

    for name, figure in figures.items():
        if isinstance(figure, torch.Tensor):
            image = figure.detach().float().cpu().clamp(0, 1)
            writer.add_image(f"figures/{name}", image, step, dataformats="CHW")
        else:
            writer.add_figure(f"figures/{name}", figure, step)  # and closes it
    writer.flush()


def flatten_hparams(config_plain: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as ``{"optim.lr": 0.001, ...}`` with values TensorBoard takes:
    bool, int, float and str as they are; lists and tuples as JSON text; None as "None";
    anything else as ``str()``."""
    from toolbox.config.plain import flat

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
    """``sample_grid``'s grid of ``inputs`` under ``tag``, for image datasets. Returns False,
    writing nothing, for inputs that are not such images."""
    grid = sample_grid(
        inputs, mean, std, max_samples=max_samples, normalized=normalized, min_size=min_size
    )
    if grid is None:
        return False
    writer.add_image(tag, grid, step, dataformats="CHW")
    writer.flush()
    return True


def sample_grid(
    inputs: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    max_samples: int = 64,
    normalized: bool = False,
    min_size: int = 32,
) -> torch.Tensor | None:
    """A grid of up to ``max_samples`` images (8 a row), an RGB (3, H, W) tensor in [0, 1];
    None for inputs that are not images.

    ``inputs`` is (N, C, H, W) with C 1 or 3, in the dataset's stored units (uint8 pixels or
    floats; pass ``normalized=True`` for batches already turned into ``(x - mean) / std``).
    ``mean`` and ``std`` are ``DatasetInfo.mean``/``.std`` (per channel, or one value), in
    stored units. Display range: one window for all channels, ``mean +- 3 std`` cut to the
    batch's min and max, mapped to [0, 1]: for pixels that is their own full range (0-255
    for MNIST and CIFAR, 0-16 for the 8x8 digits); unbounded floats are clipped at 3 std.
    Images smaller than ``min_size`` pixels are enlarged by an integer factor (nearest
    neighbour) so that the grid is legible.
    """
    import torch

    if inputs.ndim != 4 or inputs.shape[1] not in (1, 3) or inputs.shape[0] == 0:
        return None
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
        return None
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
    return _grid(images, columns=8, padding=2, pad_value=1.0)


def _grid(images: torch.Tensor, columns: int, padding: int, pad_value: float) -> torch.Tensor:
    """(N, C, H, W) images as one RGB (3, H', W') grid of ``columns`` a row, each framed by
    ``padding`` pixels of ``pad_value`` (one image alone: unframed), as torchvision's
    ``make_grid`` lays them out, without importing torchvision (a second or more) for a run
    that has no other use for it."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    count, channels, height, width = images.shape
    if count == 1:
        return images[0].clone()  # as make_grid: one image, unframed
    across = min(columns, count)
    down = math.ceil(count / across)
    cell_height, cell_width = height + padding, width + padding
    grid = images.new_full(
        (channels, cell_height * down + padding, cell_width * across + padding), pad_value
    )
    for index, image in enumerate(images):
        top = (index // across) * cell_height + padding
        left = (index % across) * cell_width + padding
        grid[:, top : top + height, left : left + width] = image
    return grid
