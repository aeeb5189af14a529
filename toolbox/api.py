"""The Python API: configure, train, test and load a run from a notebook or a script.

    import toolbox
    cfg = toolbox.config(arch="cnn", dataset="mnist", epochs=5, **{"optim.lr": 1e-3})
    result = toolbox.train(cfg)          # result.run_dir, result.best, result.metrics
    df = toolbox.test(result.run_dir)    # per-sample predictions as a DataFrame
    model = toolbox.load_model(result.run_dir)  # eval mode, raw inputs

Mistakes raise toolbox.errors.UserError with the same message train.py prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolbox.config.training import TrainingConfig
from toolbox.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from toolbox.training.inference import RawInputModel


@dataclass(frozen=True)
class TrainResult:
    """A finished run: where it is, its best evaluation and every evaluation."""

    run_dir: Path
    best: dict[str, Any]
    """The metrics.csv row of the evaluation --monitor rated best (the last, if none was)."""
    metrics: pd.DataFrame
    """metrics.csv: one row per evaluation."""


def train(config: TrainingConfig) -> TrainResult:
    """Train ``config`` (from toolbox.config) in this process, as train.py would; its
    run.json records ``train.py --config <run>/config.json``, which trains it again. A stop
    signal (Ctrl-C) saves the run and raises toolbox.errors.RunStopped, which names the
    command that resumes it."""
    import pandas as pd

    from toolbox.cli.main import run_training
    from toolbox.config.checks import validate
    from toolbox.records.layout import METRICS
    from toolbox.training.signals import watch_stop_signals

    if not isinstance(config, TrainingConfig):
        raise UserError(
            f"toolbox.train takes a TrainingConfig (from toolbox.config(...)), not a "
            f"{type(config).__name__}."
        )
    validate(config)
    with watch_stop_signals():
        trainer = run_training(config)
    run_dir = trainer.run_dir.resolve()  # the same run whatever the caller does with its cwd
    metrics = pd.read_csv(run_dir / METRICS)
    best_epoch = trainer.state.progress.best_epoch
    rows = metrics[metrics["epoch"] == best_epoch] if best_epoch is not None else metrics
    best = (rows if len(rows) else metrics).iloc[-1].to_dict()
    return TrainResult(run_dir=run_dir, best=best, metrics=metrics)


def test(
    run: str | Path, split: str = "test", checkpoint: str = "best", **options: Any
) -> pd.DataFrame:
    """test.py on ``run`` (a run directory or checkpoint): writes ``<run>/test/`` as test.py
    does and returns the per-sample predictions. ``options`` are test.py's others
    (device="cpu", batch_size=256, ema=False)."""
    import pandas as pd

    from toolbox.config.evaluate import EvaluateConfig
    from toolbox.training.testing import evaluate_run

    out_dir = evaluate_run(
        EvaluateConfig(run=Path(run), split=split, checkpoint=checkpoint, **options)
    )
    return pd.read_csv(out_dir / f"{split}_predictions.csv")


def load_model(
    run: str | Path, checkpoint: str = "best", device: str = "cpu", ema: bool = True
) -> RawInputModel:
    """The run's trained model in eval mode on ``device``, taking raw inputs as its dataset
    stores them (e.g. uint8 images): its normalisation is part of the model. The weight
    average is used when the run keeps one (``ema=False``: the trained weights)."""
    from toolbox.training.inference import load_trained_model

    return load_trained_model(Path(run), checkpoint, device, ema)
