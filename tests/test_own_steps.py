"""Models with their own training and evaluation steps, trained by the same trainer: named
losses in every record, figures, exact resume, test.py and torchrun; and a regression
dataset that ships with scikit-learn."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.test_distributed import torchrun
from tests.test_resume import assert_same_weights, rows_without_timing

# Every test here trains a ddpm or 40 epochs of regression, or starts torchrun.
pytestmark = pytest.mark.slow

# A tiny diffusion model on the 8x8 digits: a second or two per run.
DDPM = [
    "--arch",
    "ddpm",
    "--model.base-channels",
    "8",
    "--model.timesteps",
    "100",
    "--model.sample-steps",
    "5",
    "--model.num-samples",
    "16",
    "--epochs",
    "2",
    "--batch-size",
    "128",
    "--log-every",
    "3",
    "--device",
    "cpu",
]


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_a_diffusion_model_trains_through_its_own_steps(train, evaluate, tmp_path):
    assert train(*DDPM, "--output-dir", str(tmp_path), "--run-name", "ddpm") == 0
    run_dir = tmp_path / "ddpm"
    rows = read_rows(run_dir)
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "val_loss", "elapsed_s"]
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"]) < 1.5  # eps-MSE starts ~1
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert {"train/loss", "val/loss"} <= set(events.Tags()["scalars"])
    assert [image.step for image in events.Images("figures/samples")] == [1, 2]
    grid = (run_dir / "samples.png").read_bytes()
    assert grid.startswith(b"\x89PNG")

    assert evaluate(str(run_dir)) == 0
    with open(run_dir / "test" / "test_metrics.csv") as file:
        (summary,) = csv.DictReader(file)
    assert 0 < float(summary["loss"]) < 1.5
    with open(run_dir / "test" / "test_predictions.csv") as file:
        predictions = list(csv.DictReader(file))
    assert len(predictions) == 359 and {"loss", "timestep"} <= set(predictions[0])
    assert (run_dir / "test" / "test_samples.png").exists()


def test_figures_come_from_the_weight_average_as_in_test_py(train, evaluate, tmp_path):
    # The trainer's last grid and test.py's grid of the same checkpoint: the same seeded
    # noise through the same (averaged) weights, so the same pixels.
    assert train(*DDPM, "--ema-decay", "0.9", "--output-dir", str(tmp_path), "--run-name", "e") == 0
    run_dir = tmp_path / "e"

    def test_py_grid(*flags: str) -> np.ndarray:
        assert evaluate(str(run_dir), "--checkpoint", "last", *flags) == 0
        return np.asarray(Image.open(run_dir / "test" / "test_samples.png"))

    trained_grid = np.asarray(Image.open(run_dir / "samples.png"))
    assert np.array_equal(test_py_grid(), trained_grid)
    assert not np.array_equal(test_py_grid("--no-ema"), trained_grid)


def test_test_py_and_resume_may_change_the_sampler_but_not_the_weights(
    train, evaluate, tmp_path, capsys
):
    assert train(*DDPM, "--output-dir", str(tmp_path), "--run-name", "s") == 0
    run_dir = tmp_path / "s"

    def grid(*flags: str) -> np.ndarray:
        assert evaluate(str(run_dir), *flags) == 0
        return np.asarray(Image.open(run_dir / "test" / "test_samples.png"))

    ddim = grid()  # the run's: ddim in 5 steps, 16 samples
    ancestral = grid("--model.sampler", "ddpm", "--model.sample-steps", "3")
    assert ancestral.shape == ddim.shape and not np.array_equal(ancestral, ddim)
    assert grid("--model.num-samples", "8").shape[0] < ddim.shape[0]  # one row of 8, not 2
    capsys.readouterr()

    assert evaluate(str(run_dir), "--model.base-channels", "16") == 2
    error = capsys.readouterr().err
    assert "--model.base-channels" in error and "--model.sampler" in error  # what it may change
    assert evaluate(str(run_dir), "--model.sample-steps", "0") == 2
    assert "--model.sample-steps is 0" in capsys.readouterr().err

    resume = ["--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "3"]
    assert train(*resume, "--model.sampler", "ddpm") == 0
    saved = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)["config"]
    assert saved["model"]["sampler"] == "ddpm"
    assert train(*resume, "--epochs", "4", "--model.base-channels", "16") == 2
    assert "--model.base-channels cannot change" in capsys.readouterr().err


def test_own_steps_resume_exactly(train, tmp_path, signal_at_step):
    """The steps draw noise and timesteps from the global RNG; a stop mid-epoch and a
    resume give the weights and records of the run that never stopped."""
    outputs = tmp_path / "outputs"
    args = [*DDPM, "--epochs", "3", "--output-dir", str(outputs)]
    assert train(*args, "--run-name", "straight") == 0
    signal_at_step(13)  # 9 steps per epoch: the middle of epoch 2
    assert train(*args, "--run-name", "stopped") == 128 + signal.SIGTERM
    resume = str(outputs / "stopped" / "checkpoint.pth.tar")
    assert train("--resume", resume) == 0
    assert_same_weights(outputs / "straight", outputs / "stopped")
    assert rows_without_timing(outputs / "straight") == rows_without_timing(outputs / "stopped")


def test_own_steps_under_torchrun(tmp_path):
    result = torchrun(*DDPM, "--batch-size", "64", "--output-dir", str(tmp_path), "--run-name", "d")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_rows(tmp_path / "d")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert (tmp_path / "d" / "samples.png").exists()
    state = torch.load(tmp_path / "d" / "checkpoint.pth.tar", weights_only=True)
    assert state["progress"]["step"] == 2 * 10  # 1294 samples: 647 per rank, 10 batches of 64


def test_diabetes_regression_beats_predicting_the_mean(train, evaluate, tmp_path):
    args = ["--dataset", "diabetes", "--criterion", "mse", "--metrics", "mae", "rmse"]
    args += ["--optim.lr", "0.01", "--epochs", "40", "--device", "cpu"]
    assert train(*args, "--output-dir", str(tmp_path), "--run-name", "diabetes") == 0
    run_dir = tmp_path / "diabetes"
    assert evaluate(str(run_dir)) == 0
    with open(run_dir / "test" / "test_predictions.csv") as file:
        predictions = list(csv.DictReader(file))
    assert len(predictions) == 88  # 20% of the 442 patients
    errors = [abs(float(row["prediction_0"]) - float(row["target_0"])) for row in predictions]
    targets = [float(row["target_0"]) for row in predictions]
    mean = sum(targets) / len(targets)
    baseline = sum(abs(target - mean) for target in targets) / len(targets)
    with open(run_dir / "test" / "test_metrics.csv") as file:
        (summary,) = csv.DictReader(file)
    assert abs(float(summary["mae"]) - sum(errors) / len(errors)) < 1e-3
    assert float(summary["mae"]) < 0.8 * baseline  # ~47 against ~64 for the test mean
