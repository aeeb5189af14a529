"""End to end: train, the run directory's records, resume, and test.py."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import toolbox
from tests.conftest import TINY
from toolbox.config.plain import from_plain


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def run_dir(train, tmp_path) -> Path:
    assert train(*TINY, "--epochs", "3", "--metrics", "accuracy", "top5", "--run-name", "run") == 0
    return tmp_path / "outputs" / "run"


def test_run_directory_holds_every_record(run_dir):
    names = {path.name for path in run_dir.iterdir()}
    assert {
        "config.json",
        "checkpoint.pth.tar",
        "model_best.pth.tar",
        "training.log",
        "metrics.csv",
        "env.json",
    } <= names
    assert any(name.startswith("events.out.tfevents") for name in names)

    config = from_plain(json.loads((run_dir / "config.json").read_text()))
    assert (config.arch, config.dataset, config.epochs) == ("mlp", "synthetic", 3)
    assert config.data.num_train == 320 and config.metrics == ("accuracy", "top5")

    state = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "progress", "config"} <= set(state)
    assert state["progress"]["epoch"] == 3 and from_plain(state["config"]) == config
    assert state["progress"]["step"] == 3 * (288 // 32)

    rows = read_rows(run_dir / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert list(rows[0]) == [
        "epoch",
        "step",
        "lr",
        "train_loss",
        "train_accuracy",
        "train_top5",
        "val_loss",
        "val_accuracy",
        "val_top5",
        "elapsed_s",
    ]
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])

    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert {"python", "toolbox", "git"} <= set(env)

    log = (run_dir / "training.log").read_text()
    assert "19,210 parameters" in log and "Linear(in_features=64, out_features=256" in log
    assert "'arch': 'mlp'" in log and "epoch 3/3 train_loss" in log


def test_training_metrics_score_every_training_sample_of_the_interval(train, tmp_path):
    # Two batches of 647 cover digits' 1,294 training samples; at lr 1e-12 the weights stay
    # what they were, so train_accuracy is the trained model's accuracy on the whole split.
    from toolbox.datasets.digits import Digits

    argv = ["--dataset", "digits", "--batch-size", "647", "--epochs", "1", "--device", "cpu"]
    argv += ["--optim.lr", "1e-12", "--model.dropout", "0", "--run-name", "m"]
    assert train(*argv) == 0
    row = read_rows(tmp_path / "outputs" / "m" / "metrics.csv")[0]
    split = Digits().build().train
    model = toolbox.load_model(tmp_path / "outputs" / "m")
    with torch.no_grad():
        correct = (model(split["input"]).argmax(dim=1) == split["target"]).sum().item()
    assert float(row["train_accuracy"]) == pytest.approx(correct / len(split["target"]), abs=1e-9)
    # Off (--no-train-metrics): no column.
    assert train(*argv[:-1], "mm", "--no-train-metrics") == 0
    assert "train_accuracy" not in read_rows(tmp_path / "outputs" / "mm" / "metrics.csv")[0]


def test_best_checkpoint_follows_the_monitored_metric(train, tmp_path):
    assert train(*TINY, "--epochs", "4", "--monitor", "val_accuracy", "--run-name", "r") == 0
    run_dir = tmp_path / "outputs" / "r"
    rows = read_rows(run_dir / "metrics.csv")
    accuracies = [float(row["val_accuracy"]) for row in rows]
    best_epoch = accuracies.index(max(accuracies)) + 1  # the first epoch reaching the max
    best = torch.load(run_dir / "model_best.pth.tar", weights_only=True)
    assert best["progress"]["epoch"] == best_epoch
    assert best["progress"]["best_value"] == pytest.approx(max(accuracies))


def test_tensorboard_reader_opens_the_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/accuracy", "val/top5", "lr"} <= tags
    assert [event.step for event in events.Scalars("val/loss")] == [1, 2, 3]
    rows = read_rows(run_dir / "metrics.csv")
    assert events.Scalars("val/accuracy")[-1].value == pytest.approx(
        float(rows[-1]["val_accuracy"])
    )


@pytest.mark.slow
def test_resume_continues_the_run_and_matches_training_straight_through(train, tmp_path):
    # A schedule that does not depend on --epochs, so 2 + 2 epochs and 4 follow one curve.
    schedule = ["--scheduler", "step", "--sched.step-epochs", "1", "--sched.gamma", "0.7"]
    assert train(*TINY, *schedule, "--epochs", "4", "--run-name", "straight") == 0
    assert train(*TINY, *schedule, "--epochs", "2", "--run-name", "resumed") == 0
    resumed = tmp_path / "outputs" / "resumed"
    assert train("--resume", str(resumed / "checkpoint.pth.tar"), "--epochs", "4") == 0

    straight_rows = read_rows(tmp_path / "outputs" / "straight" / "metrics.csv")
    resumed_rows = read_rows(resumed / "metrics.csv")
    assert len(resumed_rows) == 4  # appended, not rewritten
    for a, b in zip(straight_rows, resumed_rows, strict=True):
        a.pop("elapsed_s"), b.pop("elapsed_s")
        assert a == b
    straight = torch.load(
        tmp_path / "outputs" / "straight" / "checkpoint.pth.tar", weights_only=True
    )
    final = torch.load(resumed / "checkpoint.pth.tar", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(value, final["model"][key]), key
    config = json.loads((resumed / "config.json").read_text())
    assert config["epochs"] == 4
    log = (resumed / "training.log").read_text()
    assert "epoch 2/2 train_loss" in log and f"resuming {resumed} at epoch 3" in log


def test_resume_refuses_options_fixed_by_the_checkpoint(capsys, train, run_dir):
    checkpoint = str(run_dir / "checkpoint.pth.tar")
    for argv in (
        ["--arch", "cnn"],
        ["--dataset", "digits"],
        ["--model.hidden-sizes", "32"],
        ["--data.num-train", "100"],
    ):
        assert train("--resume", checkpoint, "--epochs", "5", *argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "cannot change when a run is resumed" in err and argv[0].lstrip("-")[:6] in err
    assert train("--resume", checkpoint) == 2
    assert "already trained 3 of --epochs 3" in capsys.readouterr().err


def test_predictions_name_each_sample_and_its_classes():
    from toolbox.datasets import DatasetInfo, DatasetSplits
    from toolbox.training.testing import _named

    info = DatasetInfo("classification", (2,), 2, class_names=("cat", "grey dog"))
    samples = {"input": torch.zeros(3, 2), "target": torch.tensor([0, 1, 1])}
    splits = DatasetSplits(
        info, samples, samples, samples, sources={"test": ["a.png", "b/c.png", "d.png"]}
    )
    columns = {"target": torch.tensor([0, 1, 1]), "prediction": torch.tensor([1, 1, 0])}
    columns["probability"] = torch.tensor([0.5, 0.9, 0.7])
    named = _named(columns, splits, "test")
    assert list(named) == [
        *("path", "target", "target_name", "prediction", "prediction_name", "probability")
    ]
    assert named["path"] == ["a.png", "b/c.png", "d.png"]
    assert named["target_name"] == ["cat", "grey dog", "grey dog"]
    assert named["prediction_name"] == ["grey dog", "grey dog", "cat"]
    assert "path" not in _named(columns, splits, "val")  # no sources recorded for it


def test_test_py_writes_metrics_and_predictions(evaluate, run_dir, capsys):
    assert evaluate(str(run_dir)) == 0
    shown = capsys.readouterr().out
    metrics = pd.read_csv(run_dir / "test" / "test_metrics.csv")
    assert list(metrics.columns) == ["loss", "accuracy", "top5"] and len(metrics) == 1
    predictions = pd.read_csv(run_dir / "test" / "test_predictions.csv")
    assert list(predictions.columns) == [
        *("index", "target", "target_name", "prediction", "prediction_name"),
        *("loss", "probability"),
    ]
    assert len(predictions) == 64
    # synthetic's classes are named by their numbers
    assert (predictions["prediction_name"] == predictions["prediction"]).all()
    # The summary is exact: it agrees with the per-sample rows.
    assert metrics["accuracy"][0] == pytest.approx(
        (predictions["target"] == predictions["prediction"]).mean()
    )
    assert metrics["loss"][0] == pytest.approx(predictions["loss"].mean(), rel=1e-5)
    assert predictions["probability"].between(0, 1).all()
    assert f"{metrics['accuracy'][0]:.4f}" in shown

    assert evaluate(str(run_dir / "checkpoint.pth.tar"), "--split", "val") == 0
    assert len(pd.read_csv(run_dir / "test" / "val_predictions.csv")) == 32
    assert evaluate(str(run_dir), "--checkpoint", "last") == 0


def test_regression_trains_and_writes_prediction_columns(train, evaluate, tmp_path):
    argv = [
        *TINY,
        "--data.task",
        "regression",
        "--data.num-classes",
        "2",
        "--data.noise",
        "0.1",
        "--criterion",
        "mse",
        "--metrics",
        "mae",
        "rmse",
        "--monitor",
        "val_rmse",
        "--model.dropout",
        "0",
        "--epochs",
        "4",
        "--run-name",
        "reg",
    ]
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "reg"
    rows = read_rows(run_dir / "metrics.csv")
    assert float(rows[-1]["val_rmse"]) < float(rows[0]["val_rmse"])
    assert evaluate(str(run_dir)) == 0
    predictions = pd.read_csv(run_dir / "test" / "test_predictions.csv")
    assert list(predictions.columns) == [
        "index",
        "target_0",
        "target_1",
        "prediction_0",
        "prediction_1",
        "loss",
    ]


@pytest.mark.slow
def test_default_digits_run_reaches_093_test_accuracy(train, evaluate, tmp_path):
    """The README's first command: the defaults, mlp on digits."""
    assert train("--run-name", "digits", "--device", "cpu") == 0
    run_dir = tmp_path / "outputs" / "digits"
    assert evaluate(str(run_dir)) == 0
    accuracy = pd.read_csv(run_dir / "test" / "test_metrics.csv")["accuracy"][0]
    assert accuracy >= 0.93


@pytest.mark.parametrize(
    "argv",
    [
        ["--data.loader", "dataloader", "--num-workers", "2"],
        ["--arch", "cnn", "--optimizer", "sgd", "--scheduler", "warmup_cosine"],
        ["--scheduler", "plateau", "--monitor", "val_accuracy"],
    ],
    ids=lambda argv: "-".join(a.strip("-") for a in argv[:2]),
)
def test_training_options_run_and_learn(train, tmp_path, argv):
    assert train(*TINY, "--epochs", "3", *argv, "--run-name", "x") == 0
    rows = read_rows(tmp_path / "outputs" / "x" / "metrics.csv")
    assert float(rows[-1]["val_accuracy"]) > 0.3  # 10 classes: chance is 0.1


def test_a_run_ends_its_dataloader_workers_when_it_ends(train, tmp_path):
    import multiprocessing

    before = set(multiprocessing.active_children())
    argv = ["--data.loader", "dataloader", "--num-workers", "2", "--run-name", "w"]
    assert train(*TINY, *argv) == 0
    # Left to the garbage collector, they lived on and a later gc.collect() waited ~15 s.
    assert set(multiprocessing.active_children()) - before == set()


@pytest.fixture
def linear_output_dtypes():
    """The dtype of every nn.Linear output computed while the test runs (a global hook)."""
    dtypes: list[torch.dtype] = []

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear):
            dtypes.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    yield dtypes
    handle.remove()


@pytest.fixture
def applied_grad_norms():
    """The total gradient norm each optimizer step applies (a global pre-step hook)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    norms: list[float] = []

    def record(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norms_each = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(norms_each))))

    handle = register_optimizer_step_pre_hook(record)
    yield norms
    handle.remove()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_precision_runs_the_forward_in_its_dtype_and_learns(
    train, tmp_path, linear_output_dtypes, precision
):
    assert train(*TINY, "--epochs", "3", "--precision", precision, "--run-name", "x") == 0
    run_dir = tmp_path / "outputs" / "x"
    rows = read_rows(run_dir / "metrics.csv")
    assert float(rows[-1]["val_accuracy"]) > 0.3  # 10 classes: chance is 0.1
    # Every linear layer, in training and evaluation, ran under autocast to that dtype.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert linear_output_dtypes and set(linear_output_dtypes) == {dtype}
    scaler = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)["scaler"]
    if precision == "bf16":
        assert scaler == {}  # bf16 has float32's range: no loss scaling
        return
    # fp16 scaled the loss with a GradScaler, which the checkpoint keeps. It stepped once per
    # optimizer step (27): each either counted towards growth or halved the scale from 2**16
    # (growth needs 2000 clean steps in a row).
    steps = int(rows[-1]["step"])
    halvings = math.log2(2.0**16 / scaler["scale"])
    assert steps == 27 and halvings == round(halvings) >= 0
    assert 0 <= scaler["_growth_tracker"] <= steps - halvings
    assert scaler["_growth_tracker"] == steps or halvings > 0


def test_clip_grad_bounds_the_norm_each_step_applies_and_learns(
    train, tmp_path, applied_grad_norms
):
    common = [*TINY, "--epochs", "3", "--grad-accum", "3", "--seed", "0"]
    assert train(*common, "--run-name", "unclipped") == 0
    unclipped = list(applied_grad_norms)
    applied_grad_norms.clear()
    assert train(*common, "--clip-grad", "0.5", "--run-name", "x") == 0
    rows = read_rows(tmp_path / "outputs" / "x" / "metrics.csv")
    assert float(rows[-1]["val_accuracy"]) > 0.3  # 10 classes: chance is 0.1
    assert len(applied_grad_norms) == len(unclipped) == 9  # 3 epochs of 3 groups of 3 batches
    assert max(applied_grad_norms) <= 0.5 * (1 + 1e-5)
    # The same first gradients (same seed): the unclipped run steps with a larger norm, which
    # --clip-grad scales down to 0.5.
    assert unclipped[0] > 0.5
    assert applied_grad_norms[0] == pytest.approx(0.5, rel=1e-4)


def test_gradient_accumulation_equals_the_larger_batch(train, tmp_path):
    # 256 training samples: 4 batches of 64, or 4 groups of 2 batches of 32 drawn from the
    # same permutation, so the summed gradients match up to float rounding.
    common = [*TINY, "--data.val-fraction", "0.2", "--model.dropout", "0", "--epochs", "2"]
    assert train(*common, "--batch-size", "64", "--run-name", "big") == 0
    assert train(*common, "--batch-size", "32", "--grad-accum", "2", "--run-name", "acc") == 0
    big = torch.load(tmp_path / "outputs" / "big" / "checkpoint.pth.tar", weights_only=True)
    acc = torch.load(tmp_path / "outputs" / "acc" / "checkpoint.pth.tar", weights_only=True)
    assert big["progress"]["step"] == acc["progress"]["step"] == 8
    for key, value in big["model"].items():
        torch.testing.assert_close(acc["model"][key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_model_checkpoints_load_uncompiled(train, evaluate, tmp_path):
    assert train(*TINY, "--compile", "--run-name", "compiled") == 0
    run_dir = tmp_path / "outputs" / "compiled"
    state = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert not [key for key in state["model"] if "_orig_mod" in key]
    assert evaluate(str(run_dir)) == 0  # test.py builds the model uncompiled
    log = (run_dir / "training.log").read_text()
    assert log.count("torch.compile warm-up: the first step took") == 1


def test_live_progress_on_a_terminal(tmp_path):
    import io

    from rich.console import Console

    from toolbox.cli.parse import parse_training_config
    from toolbox.training.trainer import Trainer

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160)
    config = parse_training_config([*TINY, "--output-dir", str(tmp_path), "--run-name", "tty"])
    Trainer(config, console).fit()
    shown = screen.getvalue()
    assert "━" in shown and "samples/s" in shown and "eta" in shown  # the live bar
    # Above it, a table of the recent evaluations.
    assert "train_loss" in shown and "val_accuracy" in shown and "best" in shown
    assert "epoch 2/2 train_loss" in shown
    # Progress lines are the bar's job on a terminal, but the log file keeps them.
    assert "step 5/18" not in shown
    assert "step 5/18" in (tmp_path / "tty" / "training.log").read_text()


def test_only_metrics_that_are_sums_over_samples_are_scored_on_training_batches():
    from toolbox.config.training import TrainingConfig
    from toolbox.metrics import METRICS
    from toolbox.training.recorder import train_metric_names

    names = ("accuracy", "f1_macro", "auroc", "top5")
    metrics = {name: METRICS.get(name)() for name in names}
    assert train_metric_names(TrainingConfig(), metrics) == ["accuracy", "top5"]
