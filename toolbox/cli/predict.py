"""predict.py: a trained run on new inputs, one CSV row per input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from toolbox.config.training import DEVICE_PATTERN
from toolbox.errors import UserError

SHOWN = 5
"""How many unreadable inputs the message names before it counts the rest."""


@dataclass(frozen=True)
class PredictConfig:
    """Run a trained model on new inputs: image files or folders of them (decoded, resized and
    normalised as the run's dataset did), a CSV/TSV/Parquet table for a table run, or a
    .pt/.npz holding an 'input' array. Writes <run>/predict/<name>.csv: one row per input
    with its path (or row), the predicted class, its name and probability and the --top-k
    most probable classes (a regression run: the predicted values). Unreadable inputs are
    listed and skipped."""

    run: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN_DIR_OR_CHECKPOINT")]
    """A run directory (outputs/<run>) or a checkpoint file inside one."""
    inputs: Annotated[tyro.conf.Positional[tuple[Path, ...]], tyro.conf.arg(metavar="INPUTS")]
    """Files and folders to predict on."""
    top_k: int = 5
    """How many of the most probable classes each row lists (at most the run's classes)."""
    name: str | None = None
    """The CSV's name under <run>/predict/ (None: the first input's name)."""
    checkpoint: Literal["best", "last"] = "best"
    """Which checkpoint of a run directory: model_best.pth.tar or checkpoint.pth.tar."""
    ema: bool = True
    """Use the moving average of the weights of a run trained with --ema-decay (--no-ema: the
    trained weights)."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps."""
    batch_size: int = 256
    """Inputs per forward pass."""


def predict_main(argv: list[str], program: str = "predict.py") -> int:
    from toolbox.cli import default_checks

    default_checks.install()
    options = tyro.cli(PredictConfig, args=argv, prog=program)
    predict(options)
    return 0


def predict(options: PredictConfig) -> Path:
    """Writes and returns the predictions CSV."""
    if not DEVICE_PATTERN.fullmatch(options.device):
        raise UserError(
            f"--device is {options.device!r}; use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps."
        )
    for name, value in (("--top-k", options.top_k), ("--batch-size", options.batch_size)):
        if value < 1:
            raise UserError(f"{name} is {value}; it must be at least 1.")
    if not options.inputs:
        raise UserError("give the inputs to predict on after the run, e.g. predict.py RUN a.png.")
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress

    from toolbox.data.atomic import write_text
    from toolbox.training.inference import checkpoint_of, load_trained_model
    from toolbox.training.prediction import predict_rows, read_inputs

    model = load_trained_model(options.run, options.checkpoint, options.device, options.ema)
    config = model.config
    inputs = read_inputs(list(options.inputs), config, model.info, options.batch_size)
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("predicting", total=None)
        rows = predict_rows(
            model,
            inputs,
            model.info,
            model.mean.device,
            options.top_k,
            lambda count: progress.advance(task, count),
        )
    if inputs.unreadable:
        shown = ", ".join(f"{name} ({reason})" for name, reason in inputs.unreadable[:SHOWN])
        more = len(inputs.unreadable) - SHOWN
        console.print(
            f"skipped {len(inputs.unreadable)} unreadable inputs: {shown}"
            + (f" and {more} more" if more > 0 else ""),
            style="yellow",
            soft_wrap=True,  # paths stay whole, for copy and paste
        )
    if not rows:
        raise UserError("none of the inputs could be read; nothing was predicted.")
    run_dir = checkpoint_of(options.run, options.checkpoint).parent
    name = options.name or Path(options.inputs[0]).stem or "predictions"
    out = run_dir / "predict" / f"{Path(name).stem}.csv"
    out.parent.mkdir(exist_ok=True)
    write_text(out, pd.DataFrame(rows).to_csv(index=False))
    Console(highlight=False).print(f"predicted {len(rows):,} inputs: wrote {out}")
    return out
