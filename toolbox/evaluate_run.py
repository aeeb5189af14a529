"""test.py: evaluate a run's checkpoint on a split and write its metrics and predictions."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from toolbox.config import DEVICE_PATTERN, validate
from toolbox.errors import UserError


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate a trained run on its test (or validation) split. Options of the run's model
    that change no weight may follow and override the run's (e.g. --model.sampler ddpm
    --model.sample-steps 1000 for ddpm)."""

    run: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN_DIR_OR_CHECKPOINT")]
    """A run directory (outputs/<run>) or a checkpoint file inside one."""
    split: Literal["test", "val"] = "test"
    """Split to evaluate."""
    checkpoint: Literal["best", "last"] = "best"
    """Which checkpoint of a run directory: model_best.pth.tar or checkpoint.pth.tar (ignored
    when a checkpoint file is given)."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps."""
    batch_size: int | None = None
    """Evaluation batch size, in samples (None: the run's --eval-batch-size)."""
    ema: bool = True
    """Evaluate the moving average of the weights of a run trained with --ema-decay, as its
    own evaluations did (--no-ema: the trained weights)."""


def split_model_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without its --model.* options and their values, and those (test.py's own
    options are parsed before the run's model is known)."""
    rest, model_options = [], []
    target = rest
    for arg in argv:
        if arg.startswith("--"):
            target = model_options if arg.startswith("--model.") else rest
        target.append(arg)
    return rest, model_options


def with_model_options(config, argv: list[str], prog: str):
    """``config`` with the --model.* options of ``argv``; only the model's weightless
    options (ModelConfig.weightless_options) may change."""
    model = config.model
    options = dataclasses.make_dataclass(
        "ModelOptions", [("model", type(model), dataclasses.field(default=model))], frozen=True
    )
    chosen = tyro.cli(options, args=argv, default=options(model), prog=prog).model
    free = type(model).weightless_options
    fixed = [
        f"--model.{field.name.replace('_', '-')}"
        for field in dataclasses.fields(model)
        if field.name not in free and getattr(chosen, field.name) != getattr(model, field.name)
    ]
    if fixed:
        allowed = " ".join(f"--model.{name.replace('_', '-')}" for name in free) or "none"
        raise UserError(
            f"{', '.join(fixed)}: test.py cannot change the run's model, whose weights were "
            f"trained with the saved value; of --arch {config.arch}'s options it may change "
            f"only those that change no weight ({allowed})."
        )
    changed = dataclasses.replace(config, model=chosen)
    validate(changed)
    return changed


def evaluate_run(
    options: EvaluateConfig, model_options: Sequence[str] = (), prog: str = "test.py"
) -> Path:
    """Evaluate, print a table, and write ``<run>/test/<split>_{metrics,predictions}.csv``;
    ``model_options`` are --model.* arguments (see with_model_options)."""
    if not DEVICE_PATTERN.fullmatch(options.device):
        raise UserError(
            f"--device is {options.device!r}; use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps."
        )
    if options.batch_size is not None and options.batch_size < 1:
        raise UserError(f"--batch-size is {options.batch_size}; it must be at least 1.")
    import pandas as pd
    from rich.console import Console
    from rich.table import Table
    from torch.utils.tensorboard import SummaryWriter

    from toolbox import checkpoint
    from toolbox.config import from_plain
    from toolbox.data.loaders import make_loader
    from toolbox.evaluation import evaluate, evaluate_own_steps
    from toolbox.metrics import METRICS
    from toolbox.records import write_figures
    from toolbox.runtime import build_model, input_normalizer, resolve_device
    from toolbox.steps import StepRunner, draw_figures, has_own_steps

    path = Path(options.run)
    if path.is_dir():
        name = checkpoint.BEST if options.checkpoint == "best" else checkpoint.LAST
        checkpoint_path = path / name
        if not checkpoint_path.is_file():
            raise UserError(
                f"{path} has no {name}; is it a run directory (outputs/<run>)? "
                "A run that never evaluated has no model_best.pth.tar: use --checkpoint last."
            )
    else:
        checkpoint_path = path
    run_dir = checkpoint_path.parent
    state = checkpoint.load_checkpoint(checkpoint_path)
    config = from_plain(state["config"], f"the config in {checkpoint_path}")
    if model_options:
        config = with_model_options(config, list(model_options), prog)

    device = resolve_device(options.device)
    splits = config.data.build()
    info = splits.info
    model = build_model(config, info, device)
    averaged = options.ema and state.get("ema") is not None
    weights = state["ema"] if averaged else state["model"]
    checkpoint.load_model_state(model, weights, str(checkpoint_path), strict=True)
    metrics = {name: METRICS.get(name)() for name in config.metrics}
    loader = make_loader(
        splits.split(options.split),
        options.batch_size or config.eval_batch_size,
        kind="memory",
        device=device,
        train=False,
    )
    common = {
        "normalizer": input_normalizer(config, info, device),
        "metrics": metrics,
        "device": device,
        "precision": config.precision,
        "keep_predictions": True,
    }
    out_dir = run_dir / "test"
    out_dir.mkdir(exist_ok=True)
    if has_own_steps(model):
        result = evaluate_own_steps(
            StepRunner(model), loader, loss_names=tuple(model.loss_names), **common
        )
        figures = draw_figures(model)
        if figures:
            with SummaryWriter(str(out_dir)) as writer:
                figures = {f"{options.split}_{name}": value for name, value in figures.items()}
                write_figures(writer, out_dir, figures, state["progress"]["epoch"])
    else:
        result = evaluate(
            model,
            loader,
            criterion=config.loss.build().to(device),
            classification=info.task == "classification",
            **common,
        )
    summary = {**result.losses, **result.metrics}
    pd.DataFrame([summary]).to_csv(out_dir / f"{options.split}_metrics.csv", index=False)
    predictions = {"index": range(len(next(iter(result.predictions.values()))))}
    for key, values in result.predictions.items():
        if values.ndim == 1:
            predictions[key] = values.numpy()
        else:  # one column per output, e.g. per regression target
            for column, value in enumerate(values.flatten(1).T):
                predictions[f"{key}_{column}"] = value.numpy()
    pd.DataFrame(predictions).to_csv(out_dir / f"{options.split}_predictions.csv", index=False)

    progress = state["progress"]
    console = Console(highlight=False)
    console.print(
        f"{config.arch} on {config.dataset}, {options.split} split "
        f"({len(predictions['index']):,} samples), {checkpoint_path} "
        f"(epoch {progress['epoch']}, step {progress['step']}"
        f"{', moving average of the weights' if averaged else ''})"
    )
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(
        f"wrote {out_dir / f'{options.split}_metrics.csv'} and "
        f"{out_dir / f'{options.split}_predictions.csv'}"
    )
    return out_dir
