"""examples/04_gan.py: a GAN whose generator and discriminator each have their own optimizer,
trained through the trainer: both losses in the records, a sample grid per evaluation,
both optimizers in the checkpoint, an exact resume, and torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import REPO
from tests.test_plugins import forget
from tests.test_resume import assert_resumes_like_a_straight_run

EXAMPLE = REPO / "examples" / "04_gan.py"
# 1,294 training digits: 20 steps of 64 per epoch, a second or so per run.
GAN = ["--plugins", str(EXAMPLE), "--arch", "dcgan", "--dataset", "digits", "--metrics"]
GAN += ["--batch-size", "64", "--epochs", "2", "--log-every", "5", "--device", "cpu"]
OPTIMIZERS = ["generator", "discriminator"]


@pytest.fixture(autouse=True)
def _forget_the_example():
    """Each test imports the example as a plugin; the registry is left as it was."""
    yield
    forget("dcgan")


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def load(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)


def test_the_gan_trains_on_digits_logging_both_losses_and_a_sample_grid(train, tmp_path):
    assert train(*GAN, "--run-name", "gan") == 0
    run_dir = tmp_path / "outputs" / "gan"
    rows = read_rows(run_dir)
    assert [row["step"] for row in rows] == ["20", "40"]
    losses = [f"{split}_{name}" for split in ("train", "val") for name in ("d_loss", "g_loss")]
    assert {"lr", "lr_generator", "lr_discriminator", *losses} <= set(rows[0])
    for row in rows:
        for split in ("train", "val"):
            parts = float(row[f"{split}_d_loss"]) + float(row[f"{split}_g_loss"])
            assert float(row[f"{split}_loss"]) == pytest.approx(parts, rel=1e-5)
        # Neither network has won (a d_loss near 0 or a diverged g_loss): both train.
        assert 0.1 < float(row["val_d_loss"]) < 3 and 0.1 < float(row["val_g_loss"]) < 5
    grid = Image.open(run_dir / "samples.png")
    assert grid.format == "PNG" and grid.size == (8 * 10 + 2, 8 * 10 + 2)  # 64 digits, 8 a row


def test_the_checkpoint_holds_both_optimizers(train, tmp_path):
    assert train(*GAN, "--run-name", "gan") == 0
    saved = load(tmp_path / "outputs" / "gan")
    named = saved["named_optimizers"]
    assert list(named) == OPTIMIZERS
    generator = [key for key in saved["model"] if key.startswith("generator.")]
    for name, states in named.items():
        groups = states["optimizer"]["param_groups"]
        assert {group["betas"] for group in groups} == {(0.5, 0.999)}
        steps = {state["step"].item() for state in states["optimizer"]["state"].values()}
        assert steps == {40.0}, name  # each stepped once per training step
        assert states["scheduler"]["last_epoch"] == 40
    # Every generator parameter (weights and biases, not the norms' buffers) has a state.
    trained = [key for key in generator if "running" not in key and "num_batches" not in key]
    assert len(named["generator"]["optimizer"]["state"]) == len(trained)
    assert saved["optimizer"] is named["generator"]["optimizer"]  # the first, stored once


def test_a_sigterm_mid_run_then_resume_ends_like_a_straight_run(
    train, tmp_path, monkeypatch, signal_at_step
):
    outputs = tmp_path / "outputs"
    argv = [*GAN, "--epochs", "3", "--checkpoint-every-steps", "7", "--output-dir", str(outputs)]
    assert_resumes_like_a_straight_run(train, outputs, argv, 27, signal_at_step, monkeypatch)
    straight, resumed = load(outputs / "straight"), load(outputs / "stopped")
    assert {key.split(".")[0] for key in straight["model"]} == {"generator", "discriminator"}
    for name in OPTIMIZERS:
        for part in ("optimizer", "scheduler"):
            a, b = straight["named_optimizers"][name][part], resumed["named_optimizers"][name][part]
            assert_equal_states(a, b, f"{name} {part}")


def assert_equal_states(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_states(a[key], b[key], f"{where} {key}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


# train.py under torchrun, with each rank's weights kept at the end of fit().
KEEP_EACH_RANKS_WEIGHTS = textwrap.dedent("""
    import runpy, sys, torch
    from toolbox.training.trainer import Trainer

    fit = Trainer.fit

    def fit_and_keep_weights(self):
        run_dir = fit(self)
        torch.save(self.model.state_dict(), run_dir / f"rank{self.dist.rank}.pt")
        return run_dir

    Trainer.fit = fit_and_keep_weights
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path("train.py", run_name="__main__")
""")


@pytest.mark.slow
def test_the_gan_under_torchrun_ends_with_the_same_weights_on_both_ranks(tmp_path):
    """Each rank draws its own noise, so two processes are not one with twice the batch;
    but each optimizer averages its gradients over the ranks, so they stay in step."""
    script = tmp_path / "train_keeping_weights.py"
    script.write_text(KEEP_EACH_RANKS_WEIGHTS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", str(script), *GAN, "--batch-size", "32"]
    command += ["--output-dir", str(tmp_path), "--run-name", "gan"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "gan"
    assert [row["step"] for row in read_rows(run_dir)] == ["20", "40"]  # 2 x 32 a step
    assert (run_dir / "samples.png").exists()
    rank0, rank1 = (torch.load(run_dir / f"rank{rank}.pt") for rank in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key, value in rank0.items():
        assert torch.equal(rank1[key], value), key
    assert "distributed: 2 processes (gloo)" in (run_dir / "training.log").read_text()
