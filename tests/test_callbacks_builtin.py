"""The built-in callbacks: grad_norm's values reach every tracker and are the gradients' norm,
profiler writes a trace of the steps asked for, lr_finder suggests a rate and leaves the run
as it was (or applies the rate), device_stats logs memory; each bad option is one message."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tests.test_loggers import private_trackers, wandb_run  # noqa: F401 - a fixture
from tests.test_manual_optimization import plugin  # noqa: F401 - a fixture

# digits: 1,294 training samples, 20 optimizer steps of 64 in its one epoch.
BASE = ["--dataset", "digits", "--device", "cpu", "--loggers", "tensorboard"]
DIGITS = [*BASE, "--epochs", "1"]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard event files, as (step, value) by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def rows(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)


# --- grad_norm ------------------------------------------------------------------------------


def test_grad_norm_logs_the_norm_of_the_gradients_about_to_be_applied_every_n_steps(
    train, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from toolbox.callbacks.grad_norm import GradNormLogger

    # An independent measurement beside the callback's: torch's own total norm, at the
    # moment the callback is called (the trainer has unscaled the gradients by then).
    expected = {}
    measure = GradNormLogger.on_before_optimizer_step

    def measure_too(self, trainer, name):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        expected[trainer.state.progress.step + 1] = float(torch.nn.utils.get_total_norm(grads))
        measure(self, trainer, name)

    monkeypatch.setattr(GradNormLogger, "on_before_optimizer_step", measure_too)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [*BASE[:-1], "tensorboard", "mlflow", "--epochs", "1"]
    argv += ["--logger.mlflow.tracking-uri", uri]
    argv += ["--callbacks", "grad_norm", "--callback.grad-norm.every", "5", "--run-name", "g"]
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "g"
    logged = scalars(run_dir)["train/grad_norm"]
    assert [step for step, _ in logged] == [5, 10, 15, 20]
    for step, value in logged:
        assert math.isfinite(value) and value > 0
        assert value == pytest.approx(expected[step], rel=1e-6)  # float32 in TensorBoard
    log = (run_dir / "training.log").read_text()
    assert f"step 5 grad_norm {expected[5]:.4g}" in log
    run_id = json.loads((run_dir / "run.json").read_text())["trackers"]["mlflow"]["run_id"]
    history = MlflowClient(uri).get_metric_history(run_id, "grad_norm")
    assert [m.step for m in history] == [5, 10, 15, 20]
    assert [m.value for m in history] == pytest.approx([expected[m.step] for m in history])


def test_a_clipped_run_logs_the_clipped_norm(train, tmp_path):
    argv = [*BASE, "--max-steps", "4", "--clip-grad", "0.001", "--run-name", "c"]
    assert train(*argv, "--callbacks", "grad_norm", "--callback.grad-norm.every", "1") == 0
    logged = scalars(tmp_path / "outputs" / "c")["train/grad_norm"]
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    assert all(value == pytest.approx(0.001, rel=1e-4) for _, value in logged)


def test_grad_norm_of_a_model_with_named_optimizers_is_logged_per_optimizer(
    train,
    tmp_path,
    plugin,  # noqa: F811
):
    argv = [*plugin, *TINY, "--metrics", "--epochs", "1", "--loggers", "tensorboard"]
    argv += ["--callbacks", "grad_norm", "--callback.grad-norm.every", "2"]
    argv += ["--callback.grad-norm.norm-type", "inf", "--run-name", "two"]
    assert train(*argv) == 0
    logged = scalars(tmp_path / "outputs" / "two")
    for name in ("first", "second"):  # 9 steps: each optimizer measured at every second
        values = logged[f"train/grad_norm_{name}"]
        assert [step for step, _ in values] == [2, 4, 6, 8], name
        assert all(math.isfinite(value) and value > 0 for _, value in values), name
    assert "train/grad_norm" not in logged


@pytest.mark.slow  # wandb starts its wandb-core process
def test_grad_norm_reaches_wandb_on_the_optimizer_step_axis(train, tmp_path):
    argv = [*BASE[:-1], "wandb", "--epochs", "1", "--callbacks", "grad_norm"]
    assert train(*argv, "--callback.grad-norm.every", "5", "--run-name", "w") == 0
    run_dir = tmp_path / "outputs" / "w"
    sync_dir = Path(json.loads((run_dir / "run.json").read_text())["trackers"]["wandb"]["dir"])
    _, _, history = wandb_run(sync_dir)
    measured = [(row["_step"], row["grad_norm"]) for row in history if "grad_norm" in row]
    assert [step for step, _ in measured] == [5, 10, 15, 20]
    log = (run_dir / "training.log").read_text()
    assert all(f"step {step} grad_norm {value:.4g}" in log for step, value in measured)


# --- profiler -------------------------------------------------------------------------------


def test_profiler_traces_the_steps_asked_for_into_the_run_once(train, tmp_path):
    argv = [*DIGITS, "--callbacks", "profiler", "--callback.profiler.start-step", "2"]
    assert train(*argv, "--callback.profiler.steps", "3", "--run-name", "p") == 0
    run_dir = tmp_path / "outputs" / "p"
    [trace] = (run_dir / "profiler").glob("*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    steps = {event["name"] for event in events if event.get("name", "").startswith("ProfilerStep")}
    # ProfilerStep#k is optimizer step k + 1: steps 3 to 5, and no other.
    assert steps == {"ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"}
    assert any(event.get("name", "").startswith("aten::") for event in events)
    assert (
        f"profiler: optimizer steps 3-5 traced (ProfilerStep#2-#4) to {trace}"
        in (run_dir / "training.log").read_text()
    )
    assert last_checkpoint(run_dir)["callbacks"]["profiler"] == {"traced": True}

    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "2") == 0
    assert list((run_dir / "profiler").glob("*.pt.trace.json")) == [trace]


def test_a_run_ending_inside_the_window_keeps_the_steps_traced(train, tmp_path):
    argv = [*BASE, "--max-steps", "4", "--callbacks", "profiler", "--run-name", "short"]
    assert train(*argv, "--callback.profiler.start-step", "2") == 0
    [trace] = (tmp_path / "outputs" / "short" / "profiler").glob("*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert {"ProfilerStep#2", "ProfilerStep#3"} <= names and "ProfilerStep#1" not in names


# --- lr_finder ------------------------------------------------------------------------------

SUGGESTED = re.compile(r"lr_finder: suggested lr (\S+) \(steepest descent")


def test_lr_finder_suggests_a_rate_and_the_run_trains_as_without_it(train, tmp_path):
    finder = ["--callbacks", "lr_finder", "--callback.lr-finder.steps", "40"]
    finder += ["--callback.lr-finder.min-lr", "1e-5", "--callback.lr-finder.max-lr", "1"]
    assert train(*DIGITS, "--run-name", "plain") == 0
    assert train(*DIGITS, *finder, "--run-name", "found") == 0
    plain, found = tmp_path / "outputs" / "plain", tmp_path / "outputs" / "found"
    for key, value in last_checkpoint(plain)["model"].items():
        assert torch.equal(last_checkpoint(found)["model"][key], value), key
    assert [row | {"elapsed_s": ""} for row in rows(found)] == [
        row | {"elapsed_s": ""} for row in rows(plain)
    ]

    table = list(csv.DictReader(open(found / "lr_finder.csv")))
    assert 2 <= len(table) <= 40 and list(table[0]) == ["lr", "loss", "smoothed"]
    lrs = [float(row["lr"]) for row in table]
    assert lrs[0] == pytest.approx(1e-5) and lrs == sorted(lrs)
    assert float(table[0]["loss"]) == pytest.approx(float(table[0]["smoothed"]))
    assert (found / "lr_finder.png").read_bytes()[:4] == b"\x89PNG"
    log = (found / "training.log").read_text()
    suggestion = last_checkpoint(found)["callbacks"]["lr_finder"]["suggestion"]
    assert 1e-5 <= suggestion <= 1 and suggestion in lrs
    assert float(SUGGESTED.search(log).group(1)) == pytest.approx(suggestion, rel=1e-2)

    # A resumed run has tested already: no second test, and its files are kept.
    assert train("--resume", str(found / "checkpoint.pth.tar"), "--epochs", "2") == 0
    assert len(SUGGESTED.findall((found / "training.log").read_text())) == 1
    assert len(list(csv.DictReader(open(found / "lr_finder.csv")))) == len(table)


def test_lr_finder_leaves_a_model_with_named_optimizers_as_it_was(
    train,
    tmp_path,
    plugin,  # noqa: F811
):
    argv = [*plugin, *TINY, "--metrics", "--epochs", "1", "--optimizer", "adam"]
    assert train(*argv, "--run-name", "plain") == 0
    finder = ["--callbacks", "lr_finder", "grad_norm", "--callback.grad-norm.every", "1"]
    assert train(*argv, *finder, "--run-name", "found") == 0
    plain, found = tmp_path / "outputs" / "plain", tmp_path / "outputs" / "found"
    for key, value in last_checkpoint(plain)["model"].items():
        assert torch.equal(last_checkpoint(found)["model"][key], value), key
    assert (found / "lr_finder.csv").exists()
    # The test's steps reach no listener: grad_norm measured the run's 9 steps only.
    measured = re.findall(r"step (\d+) grad_norm_first", (found / "training.log").read_text())
    assert measured == [str(step) for step in range(1, 10)]


def test_lr_finder_apply_trains_at_the_suggested_rate(train, tmp_path):
    argv = [*DIGITS, "--scheduler", "none", "--callbacks", "lr_finder"]
    assert train(*argv, "--callback.lr-finder.apply", "--run-name", "applied") == 0
    run_dir = tmp_path / "outputs" / "applied"
    suggestion = last_checkpoint(run_dir)["callbacks"]["lr_finder"]["suggestion"]
    assert float(rows(run_dir)[0]["lr"]) == pytest.approx(suggestion, rel=1e-9)
    assert suggestion != pytest.approx(1e-3)  # --optim.lr's default, replaced
    assert (
        f"training with peak lr {suggestion:.3g} (the suggestion) instead of 0.001"
        in (run_dir / "training.log").read_text()
    )


# --- device_stats ---------------------------------------------------------------------------


def test_device_stats_logs_the_resident_memory_on_the_cpu(train, tmp_path):
    argv = [*BASE, "--max-steps", "10", "--callbacks", "device_stats"]
    assert train(*argv, "--callback.device-stats.every", "5", "--run-name", "d") == 0
    run_dir = tmp_path / "outputs" / "d"
    logged = scalars(run_dir)["host/resident_memory_mb"]
    assert [step for step, _ in logged] == [5, 10]
    assert all(10 < value < 1e6 for _, value in logged)  # MB of a Python process with torch
    assert "step 10 host/resident_memory_mb" in (run_dir / "training.log").read_text()


# --- bad options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "callback, option, value",
    [
        ("grad_norm", "--callback.grad-norm.every", "0"),
        ("grad_norm", "--callback.grad-norm.norm-type", "-1"),
        ("profiler", "--callback.profiler.start-step", "-1"),
        ("profiler", "--callback.profiler.steps", "0"),
        ("lr_finder", "--callback.lr-finder.min-lr", "0"),
        ("lr_finder", "--callback.lr-finder.max-lr", "inf"),
        ("lr_finder", "--callback.lr-finder.steps", "0"),
        ("lr_finder", "--callback.lr-finder.stop-factor", "0"),
        ("device_stats", "--callback.device-stats.every", "-5"),
    ],
)
def test_a_bad_option_is_one_message_naming_it(train, tmp_path, capsys, callback, option, value):
    assert train(*DIGITS, "--callbacks", callback, option, value) == 2
    error = capsys.readouterr().err
    assert option in error and "Traceback" not in error
    assert not (tmp_path / "outputs").exists()  # refused before anything was written
