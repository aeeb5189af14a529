"""test.py's work: evaluate a run's checkpoint on a split and write its metrics and predictions."""

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
    """Evaluate, print a table, and write ``<run>/test/<split>_{metrics,predictions}.csv``;
    ``adjust_config`` may change the run's config first (test.py's --model.* options)."""
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

    from toolbox.config.plain import from_plain
    from toolbox.data.loaders import make_loader
    from toolbox.metrics import METRICS
    from toolbox.records import checkpoint
    from toolbox.records.tensorboard import write_figures
    from toolbox.training.evaluation import evaluate_steps
    from toolbox.training.runtime import build_model, input_normalizer, resolve_device
    from toolbox.training.steps import as_steps, draw_figures

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
    if adjust_config is not None:
        config = adjust_config(config)

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
    out_dir = run_dir / "test"
    out_dir.mkdir(exist_ok=True)
    steps = as_steps(model, config.loss.build().to(device), info.task == "classification")
    result = evaluate_steps(
        steps,
        loader,
        normalizer=input_normalizer(config, info, device),
        metrics=metrics,
        device=device,
        precision=config.precision,
        keep_predictions=True,
    )
    figures = draw_figures(model)
    if figures:
        with SummaryWriter(str(out_dir)) as writer:
            figures = {f"{options.split}_{name}": value for name, value in figures.items()}
            write_figures(writer, out_dir, figures, state["progress"]["epoch"])
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
