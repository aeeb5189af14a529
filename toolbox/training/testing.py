"""test.py's work: evaluate a run's checkpoint on a split and write its metrics and predictions,
and for classes the confusion matrix, a per-class table and a picture of the matrix.

torch, pandas, matplotlib and rich are imported inside the functions: test.py --help needs
none."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from toolbox.config.evaluate import EvaluateConfig
from toolbox.config.training import DEVICE_PATTERN, TrainingConfig
from toolbox.errors import UserError


def evaluate_run(
    options: EvaluateConfig,
    adjust_config: Callable[[TrainingConfig], TrainingConfig] | None = None,
) -> Path:
    """Evaluate, print a table, and write ``<run>/test/<split>_{metrics,predictions}.csv``
    (for classes also ``probabilities.csv``, ``confusion_matrix.csv``, ``per_class.csv``
    and ``confusion_matrix.png``, prefixed ``val_`` for the validation split);
    ``adjust_config`` may change the run's config first (test.py's --model.* options)."""
    if not DEVICE_PATTERN.fullmatch(options.device):
        raise UserError(
            f"--device is {options.device!r}; use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps."
        )
    if options.batch_size is not None and options.batch_size < 1:
        raise UserError(f"--batch-size is {options.batch_size}; it must be at least 1.")
    from toolbox.config.plain import from_plain
    from toolbox.records import checkpoint

    checkpoint_path = _checkpoint_path(options)
    state = checkpoint.load_checkpoint(checkpoint_path)
    config = from_plain(state["config"], f"the config in {checkpoint_path}")
    if adjust_config is not None:
        config = adjust_config(config)
    out_dir = checkpoint_path.parent / "test"
    averaged = options.ema and state.get("ema") is not None
    result, splits = _evaluate(options, config, state, str(checkpoint_path), averaged, out_dir)
    summary = {**result.losses, **result.metrics}
    columns = _named(result.predictions, splits, options.split)
    num_samples, written = _write_tables(summary, columns, out_dir, options.split)
    if num_samples is None:
        num_samples = splits.count(options.split)
    if result.tables:
        title = f"{config.arch} on {config.dataset}, {options.split} split"
        written += _write_class_tables(result, splits.info.class_names, out_dir, options, title)
    progress = state["progress"]
    where = f"{checkpoint_path} (epoch {progress['epoch']}, step {progress['step']}"
    where += ", moving average of the weights)" if averaged else ")"
    _print_summary(config, options.split, num_samples, where, summary, written)
    return out_dir


def _checkpoint_path(options: EvaluateConfig) -> Path:
    """The checkpoint test.py reads: the one named, or the run directory's best or last."""
    from toolbox.records import checkpoint

    path = Path(options.run)
    if not path.is_dir():
        return path
    name = checkpoint.BEST if options.checkpoint == "best" else checkpoint.LAST
    if not (path / name).is_file():
        raise UserError(
            f"{path} has no {name}; is it a run directory (outputs/<run>)? "
            "A run that never evaluated has no model_best.pth.tar: use --checkpoint last."
        )
    return path / name


def _evaluate(
    options: EvaluateConfig,
    config: TrainingConfig,
    state: dict,
    source: str,
    averaged: bool,
    out_dir: Path,
):
    """The checkpoint's model (or its weight average) through its evaluation step, on the
    split, and the dataset's splits; its figures, if it draws any, go to ``out_dir`` (made
    once the data is built)."""
    from torch.utils.tensorboard import SummaryWriter

    from toolbox.data.loaders import make_loader
    from toolbox.metrics import METRICS
    from toolbox.records import checkpoint
    from toolbox.records.tensorboard import write_figures
    from toolbox.training.evaluation import evaluate_steps
    from toolbox.training.runtime import build_model, input_normalizer, resolve_device
    from toolbox.training.steps import as_steps, draw_figures

    device = resolve_device(options.device)
    splits = config.data.build()
    info = splits.info
    model = build_model(config, info, device)
    weights = state["ema"] if averaged else state["model"]
    checkpoint.load_model_state(model, weights, source, strict=True)
    loader = make_loader(
        splits.split(options.split),
        options.batch_size or config.eval_batch_size,
        kind="memory",
        device=device,
        train=False,
        num_workers=config.num_workers,  # used by streamed splits
    )
    out_dir.mkdir(exist_ok=True)
    classification = info.task == "classification"
    steps = as_steps(model, config.loss.build().to(device), classification)
    result = evaluate_steps(
        steps,
        loader,
        normalizer=input_normalizer(config, info, device),
        metrics={name: METRICS.get(name)() for name in config.metrics},
        device=device,
        precision=config.precision,
        keep_predictions=True,
        class_tables=classification,
    )
    figures = draw_figures(model)
    if figures:
        with SummaryWriter(str(out_dir)) as writer:
            figures = {f"{options.split}_{name}": value for name, value in figures.items()}
            write_figures(writer, out_dir, figures, state["progress"]["epoch"])
    return result, splits


def _named(columns: dict, splits, split: str) -> dict:
    """The per-sample columns with what names them: each sample's source (file path or
    row, where the dataset records it) first, and beside a class target and prediction
    the class names."""
    count = len(next(iter(columns.values()))) if columns else 0
    sources = splits.sources.get(split)
    named = {splits.source_column: sources} if sources and len(sources) == count else {}
    class_names = splits.info.class_names
    for key, values in columns.items():
        named[key] = values
        labels = key in ("target", "prediction") and values.ndim == 1
        if labels and class_names and not values.is_floating_point():
            named[f"{key}_name"] = [class_names[i] for i in values.tolist()]
    return named


def _write_csv(frame, path: Path, index: bool = False) -> Path:
    """Writes a pandas DataFrame atomically: a reader never sees half a table."""
    from toolbox.records.atomic import write_atomically

    write_atomically(path, lambda file: frame.to_csv(file, index=index))
    return path


def _write_tables(
    summary: dict, columns: dict, out_dir: Path, split: str
) -> tuple[int | None, list[Path]]:
    """``<split>_metrics.csv`` (one row) and ``<split>_predictions.csv`` (one row per sample,
    a column per value, or per output of a multi-output value); returns the samples (None
    without per-sample columns: no predictions file) and the files."""
    import pandas as pd

    metrics_csv = _write_csv(pd.DataFrame([summary]), out_dir / f"{split}_metrics.csv")
    if not columns:  # an own evaluation step that gives no per-sample outputs
        return None, [metrics_csv]
    predictions = {"index": range(len(next(iter(columns.values()))))}
    for key, values in columns.items():
        if not hasattr(values, "ndim"):  # names: a list of strings
            predictions[key] = values
        elif values.ndim == 1:
            predictions[key] = values.numpy()
        else:  # one column per output, e.g. per regression target
            for column, value in enumerate(values.flatten(1).T):
                predictions[f"{key}_{column}"] = value.numpy()
    predictions_csv = _write_csv(pd.DataFrame(predictions), out_dir / f"{split}_predictions.csv")
    return len(predictions["index"]), [metrics_csv, predictions_csv]


def _write_class_tables(
    result, class_names: tuple[str, ...], out_dir: Path, options: EvaluateConfig, title: str
) -> list[Path]:
    """For a split of classes (named by _class_table_name): ``probabilities.csv`` (each
    sample's probability of each class, ``probability_<class index>``, beside the
    predictions' ``index``),
    ``confusion_matrix.csv`` (rows: true class, columns: predicted class),
    ``per_class.csv`` (each class's support, accuracy, i.e. recall, precision and
    F1) and ``confusion_matrix.png``; returns the files."""
    import pandas as pd

    tables, split = result.tables, options.split
    matrix = tables["confusion_matrix"]
    num_classes = len(matrix)
    labels = (
        list(class_names) if len(class_names) == num_classes else list(map(str, range(num_classes)))
    )
    written = []
    if result.probabilities is not None:
        probabilities = {"index": range(len(result.probabilities))}
        for index, column in enumerate(result.probabilities.T):
            probabilities[f"probability_{index}"] = column.numpy()
        path = out_dir / _class_table_name(split, "probabilities.csv")
        written.append(_write_csv(pd.DataFrame(probabilities), path))
    confusion = pd.DataFrame(
        matrix.numpy(), index=pd.Index(labels, name="true \\ predicted"), columns=labels
    )
    written.append(
        _write_csv(
            confusion, out_dir / _class_table_name(split, "confusion_matrix.csv"), index=True
        )
    )
    per_class = pd.DataFrame(
        {
            "class": labels,
            "support": matrix.sum(dim=1).numpy(),
            **{name: tables[key].numpy() for name, key in PER_CLASS_COLUMNS.items()},
        }
    )
    written.append(_write_csv(per_class, out_dir / _class_table_name(split, "per_class.csv")))
    png = out_dir / _class_table_name(split, "confusion_matrix.png")
    _draw_confusion_matrix(matrix.numpy(), labels, png, title)
    written.append(png)
    return written


def _class_table_name(split: str, name: str) -> str:
    """The test split's class tables go by their plain names (confusion_matrix.csv); the
    validation split's are prefixed (val_confusion_matrix.csv), so neither overwrites the
    other."""
    return name if split == "test" else f"{split}_{name}"


# per_class.csv's columns, from the evaluation's tables (toolbox.metrics.per_class.scores).
PER_CLASS_COLUMNS = {"accuracy": "recall", "precision": "precision", "f1": "f1"}
# Above this many classes the cells are too small for their counts, and then for tick labels.
MAX_CLASSES_WITH_COUNTS, MAX_CLASSES_WITH_LABELS = 20, 50


def _draw_confusion_matrix(counts, labels: list[str], png: Path, title: str) -> None:
    """The confusion matrix, each cell coloured by its share of the true class's samples (so
    that a rare class reads as clearly as a common one) and, for few classes, its count."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from toolbox.records.atomic import write_atomically

    num_classes = len(labels)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(3.0 + 0.4 * num_classes, 16.0)  # inches
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, shrink=0.8, label="share of the true class")
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axis.set_title(f"{title}: accuracy {accuracy:.4f}")
    if num_classes <= MAX_CLASSES_WITH_LABELS:
        long = max(map(len, labels)) > 3
        axis.set_xticks(range(num_classes), labels, rotation=90 if long else 0)
        axis.set_yticks(range(num_classes), labels)
    if num_classes <= MAX_CLASSES_WITH_COUNTS:
        for (row, column), count in np.ndenumerate(counts):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axis.text(column, row, str(count), ha="center", va="center", color=colour)
    write_atomically(png, lambda file: figure.savefig(file, format="png", dpi=100))


def _print_summary(
    config: TrainingConfig,
    split: str,
    num_samples: int,
    where: str,
    summary: dict,
    written: list[Path],
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(
        f"{config.arch} on {config.dataset}, {split} split ({num_samples:,} samples), {where}"
    )
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    *others, last = [path.name for path in written]
    # Unwrapped, so that the folder can be copied from any terminal.
    console.print(f"wrote {', '.join(others)} and {last} in {written[0].parent}", soft_wrap=True)
