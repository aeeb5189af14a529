"""--ema-decay: a moving average of the weights that evaluations, figures, model_best and
test.py use, saved in checkpoints and resumed exactly."""

from __future__ import annotations

import signal

import pandas as pd
import pytest
import torch
from torch import nn

from tests.conftest import TINY
from tests.test_resume import assert_same_weights, rows_without_timing
from toolbox.training.averaging import WARMUP_STEPS, WeightAverage

EMA = [*TINY, "--epochs", "3", "--model.dropout", "0.2", "--ema-decay", "0.9"]


def test_the_average_follows_the_formula_with_its_warm_up():
    model = nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.9)
    first = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model, updates=1)
    # Update 1 decays by min(0.9, 2 / 11): the average moves most of the way at first.
    warm = 2 / (WARMUP_STEPS + 1)
    assert average.decay_at(1) == pytest.approx(warm)
    expected = warm * first + (1 - warm) * 1.0
    assert torch.allclose(average.module.weight, expected)
    with torch.no_grad():
        model.weight.fill_(3.0)
    average.update(model, updates=1000)  # warmed up: the decay itself
    assert torch.allclose(average.module.weight, 0.9 * expected + 0.1 * 3.0)
    assert torch.equal(model.weight, torch.full_like(model.weight, 3.0))  # the model untouched
    assert not any(parameter.requires_grad for parameter in average.module.parameters())


def test_float_buffers_are_averaged_and_counters_copied():
    model = nn.BatchNorm1d(3)
    average = WeightAverage(model, decay=0.5)
    model.train()
    model(torch.randn(8, 3) + 10.0)
    average.update(model, updates=100)
    # running_mean: halfway from 0 (the copy's) to the model's; the counter just copied.
    assert torch.allclose(average.module.running_mean, model.running_mean / 2)
    assert average.module.num_batches_tracked.item() == 1


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 2.0])
def test_a_decay_outside_zero_to_one_is_refused(decay, train, capsys):
    assert train(*TINY, "--ema-decay", str(decay)) == 2
    error = capsys.readouterr().err
    assert f"--ema-decay is {decay}" in error and "(0, 1)" in error


def test_evaluations_and_test_py_use_the_average(train, evaluate, tmp_path):
    assert train(*EMA, "--run-name", "ema") == 0
    run_dir = tmp_path / "outputs" / "ema"
    state = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert state["ema"].keys() == state["model"].keys()
    assert any(not torch.equal(state["ema"][key], state["model"][key]) for key in state["model"])
    last_val_loss = pd.read_csv(run_dir / "metrics.csv")["val_loss"].iloc[-1]

    def val_loss(*flags: str) -> float:
        out = run_dir / "test" / "val_metrics.csv"
        assert evaluate(str(run_dir), "--split", "val", "--checkpoint", "last", *flags) == 0
        return pd.read_csv(out)["loss"].iloc[0]

    # The run's last evaluation scored the average; test.py scores the same weights.
    assert val_loss() == pytest.approx(last_val_loss, rel=1e-6)
    assert val_loss("--no-ema") != pytest.approx(last_val_loss, rel=1e-4)


def test_stopping_and_resuming_continues_the_average_exactly(train, tmp_path, signal_at_step):
    outputs = tmp_path / "outputs"
    assert train(*EMA, "--run-name", "straight") == 0
    signal_at_step(13)  # in the middle of epoch 2 of 10 steps
    assert train(*EMA, "--run-name", "stopped") == 128 + signal.SIGTERM
    assert train("--resume", str(outputs / "stopped" / "checkpoint.pth.tar")) == 0
    assert_same_weights(outputs / "straight", outputs / "stopped")
    assert rows_without_timing(outputs / "straight") == rows_without_timing(outputs / "stopped")


def test_the_decay_cannot_change_on_resume(train, tmp_path, capsys):
    assert train(*TINY, "--ema-decay", "0.9", "--run-name", "ema") == 0
    resume = ["--resume", str(tmp_path / "outputs" / "ema" / "checkpoint.pth.tar")]
    assert train(*resume, "--epochs", "3", "--ema-decay", "0.99") == 2
    assert "--ema-decay cannot change" in capsys.readouterr().err
