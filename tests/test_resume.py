"""Runs that survive: stopping at any step and resuming gives the run that never stopped."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY


def rows_without_timing(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        row.pop("elapsed_s")
    return rows


def assert_resumes_like_a_straight_run(
    train, outputs: Path, argv: list[str], stop_step: int, arrange_signal, monkeypatch
) -> None:
    """``argv`` run straight, and run again stopped by SIGTERM after ``stop_step`` (via the
    ``signal_at_step`` fixture, ``arrange_signal``) then resumed, end alike: the same
    weights and metrics.csv rows."""
    assert train(*argv, "--run-name", "straight") == 0
    arrange_signal(stop_step)
    assert train(*argv, "--run-name", "stopped") == 128 + signal.SIGTERM
    monkeypatch.undo()
    stopped = outputs / "stopped"
    assert train("--resume", str(stopped / "checkpoint.pth.tar")) == 0
    assert_same_weights(outputs / "straight", stopped)
    assert rows_without_timing(outputs / "straight") == rows_without_timing(stopped)


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    a = torch.load(run_a / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(run_b / "checkpoint.pth.tar", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # The moving average of the weights (--ema-decay), when the runs keep one.
    assert (a.get("ema") is None) == (b.get("ema") is None)
    for key, value in (a.get("ema") or {}).items():
        assert torch.equal(value, b["ema"][key]), f"ema {key}"
    assert a["progress"]["step"] == b["progress"]["step"]


# Dropout on and a cosine schedule over the whole run: the RNG, the scheduler and the
# loader position all have to come back exactly for the weights to match.
EXACT = [*TINY, "--epochs", "3", "--model.dropout", "0.2", "--metrics", "accuracy", "top5"]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--data.loader", "dataloader"],
        ["--grad-accum", "2", "--optimizer", "sgd", "--scheduler", "warmup_cosine"],
        ["--arch", "cnn", "--precision", "bf16"],
    ],
    ids=["memory", "dataloader", "accumulation", "cnn-bf16"],
)
def test_stopping_mid_epoch_and_resuming_is_bit_exact(
    train, tmp_path, monkeypatch, signal_at_step, capsys, extra
):
    outputs = tmp_path / "outputs"
    assert train(*EXACT, *extra, "--run-name", "straight") == 0
    steps_per_epoch = 9 // 2 + 1 if "--grad-accum" in extra else 9
    stop_step = steps_per_epoch + 3  # in the middle of epoch 2
    signal_at_step(stop_step)
    assert train(*EXACT, *extra, "--run-name", "stopped") == 128 + signal.SIGTERM
    stopped = outputs / "stopped"
    state = torch.load(stopped / "checkpoint.pth.tar", weights_only=True)
    assert state["progress"]["step"] == stop_step and state["progress"]["epoch"] == 1
    assert 0 < state["loader"]["next_batch"] < 9
    shown = capsys.readouterr().out
    assert "stopped by SIGTERM" in shown
    assert f"python train.py --resume {stopped / 'checkpoint.pth.tar'}" in shown

    monkeypatch.undo()
    assert train("--resume", str(stopped / "checkpoint.pth.tar")) == 0
    assert_same_weights(outputs / "straight", stopped)
    assert rows_without_timing(outputs / "straight") == rows_without_timing(stopped)


@pytest.mark.slow
def test_stopping_at_an_epoch_end_resumes_at_the_next_epoch(
    train, tmp_path, monkeypatch, signal_at_step
):
    outputs = tmp_path / "outputs"
    assert train(*EXACT, "--run-name", "straight") == 0
    signal_at_step(9, signal.SIGINT)  # the last step of epoch 1
    assert train(*EXACT, "--run-name", "stopped") == 128 + signal.SIGINT
    state = torch.load(outputs / "stopped" / "checkpoint.pth.tar", weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["loader"]["next_batch"] == 0
    monkeypatch.undo()
    assert train("--resume", str(outputs / "stopped" / "checkpoint.pth.tar")) == 0
    assert_same_weights(outputs / "straight", outputs / "stopped")
    assert rows_without_timing(outputs / "straight") == rows_without_timing(outputs / "stopped")


def test_a_second_ctrl_c_stops_at_once_and_leaves_a_loadable_checkpoint(
    train, tmp_path, signal_at_step, capsys
):
    signal_at_step(12, signal.SIGINT, times=2)
    assert train(*EXACT, "--run-name", "twice") == 130
    assert "interrupted" in capsys.readouterr().err
    state = torch.load(tmp_path / "outputs" / "twice" / "checkpoint.pth.tar", weights_only=True)
    assert state["progress"]["epoch"] == 1  # the epoch-end checkpoint, untouched
    assert not list((tmp_path / "outputs" / "twice").glob(".*.tmp*"))


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(process: subprocess.Popen, text: str, seconds: float = 120) -> str:
    """Reads the process's output until a line holds ``text``; returns what was read."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    process.kill()
    raise AssertionError(f"{text!r} never appeared in:\n{''.join(seen)}")


LONG = [
    "--dataset",
    "synthetic",
    "--data.num-train",
    "20000",
    "--batch-size",
    "32",
    "--epochs",
    "50",
    "--log-every",
    "20",
    "--device",
    "cpu",
    "--model.dropout",
    "0.2",
]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_real_signal_saves_the_position_and_exits_with_its_code(tmp_path, signum):
    run_dir = tmp_path / "run"
    process = _start([*LONG, "--output-dir", str(tmp_path), "--run-name", "run"])
    _wait_for(process, "step 40/")  # mid-epoch 1 of 50
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, output
    assert f"continue with: python train.py --resume {run_dir / 'checkpoint.pth.tar'}" in output
    assert "Traceback" not in output
    state = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert state["progress"]["step"] >= 40 and state["loader"]["next_batch"] > 0


@pytest.mark.slow
def test_kill_9_between_periodic_checkpoints_resumes_to_the_same_result(train, tmp_path):
    """--checkpoint-every-steps: a process killed without warning loses at most K steps,
    and the resumed run ends exactly where the uninterrupted one does."""
    argv = [
        *TINY,
        "--data.num-train",
        "3200",
        "--epochs",
        "2",
        "--model.dropout",
        "0.2",
        "--checkpoint-every-steps",
        "7",
        "--log-every",
        "1",
    ]
    assert train(*argv, "--run-name", "straight") == 0
    process = _start([*argv, "--output-dir", str(tmp_path / "outputs"), "--run-name", "killed"])
    _wait_for(process, "step 30/")
    process.kill()
    process.wait(timeout=60)
    killed = tmp_path / "outputs" / "killed"
    state = torch.load(killed / "checkpoint.pth.tar", weights_only=True)
    assert state["progress"]["step"] % 7 == 0 and state["progress"]["step"] >= 28
    assert train("--resume", str(killed / "checkpoint.pth.tar")) == 0
    assert_same_weights(tmp_path / "outputs" / "straight", killed)
    assert rows_without_timing(tmp_path / "outputs" / "straight") == rows_without_timing(killed)


# --- divergence --------------------------------------------------------------------------


@pytest.fixture
def poisoned(monkeypatch):
    """Makes the synthetic dataset's training samples at ``indices`` NaN."""
    from toolbox.datasets.synthetic import Synthetic

    def poison(*indices: int) -> None:
        build = Synthetic.build

        def poisoned_build(self):
            splits = build(self)
            splits.train["input"][list(indices)] = float("nan")
            return splits

        monkeypatch.setattr(Synthetic, "build", poisoned_build)

    return poison


def first_batches_holding(indices: set[int], epochs: int = 1) -> list[tuple[int, int]]:
    """(epoch, batch) of every training batch of TINY that holds one of ``indices``."""
    from toolbox.data.loaders import make_loader

    samples = {"input": torch.arange(288), "target": torch.arange(288)}
    loader = make_loader(samples, 32, kind="memory", device=torch.device("cpu"), train=True)
    return [
        (epoch, batch_idx)
        for epoch in range(epochs)
        for batch_idx, batch in enumerate(loader)
        if indices & set(batch["input"].tolist())
    ]


def test_a_non_finite_loss_aborts_naming_the_batch_and_keeps_the_last_checkpoint(
    train, tmp_path, poisoned, capsys
):
    assert train(*TINY, "--epochs", "1", "--run-name", "run") == 0
    run_dir = tmp_path / "outputs" / "run"
    good = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    poisoned(5)
    (epoch, batch_idx), *_ = [hit for hit in first_batches_holding({5}, 2) if hit[0] == 1]
    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "3") == 3
    message = " ".join(capsys.readouterr().err.split())
    assert f"non-finite in epoch 2, batch {batch_idx + 1}" in message
    assert "--optim.lr" in message and "--clip-grad" in message
    assert f"the last good checkpoint is {run_dir / 'checkpoint.pth.tar'}" in message
    kept = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert kept["progress"] == good["progress"]
    assert all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())


def test_the_skip_policy_drops_bad_batches_and_counts_them(train, tmp_path, poisoned):
    poisoned(5, 100)
    expected = len(first_batches_holding({5, 100}, 2))
    assert train(*TINY, "--nan-policy", "skip", "--run-name", "skip") == 0
    run_dir = tmp_path / "outputs" / "skip"
    rows = rows_without_timing(run_dir)
    assert int(rows[-1]["nan_skips"]) == expected
    state = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert all(torch.isfinite(value).all() for value in state["model"].values())
    assert "non-finite loss, batch skipped" in (run_dir / "training.log").read_text()


def test_the_skip_policy_aborts_after_max_nan_skips(train, poisoned, capsys):
    poisoned(5, 100)
    assert train(*TINY, "--nan-policy", "skip", "--max-nan-skips", "1") == 3
    assert "non-finite" in capsys.readouterr().err


def test_lowering_the_learning_rate_on_resume_takes_effect(train, tmp_path):
    assert train(*TINY, "--scheduler", "none", "--epochs", "1", "--run-name", "run") == 0
    run_dir = tmp_path / "outputs" / "run"
    checkpoint = str(run_dir / "checkpoint.pth.tar")
    assert train("--resume", checkpoint, "--epochs", "2", "--optim.lr", "1e-5") == 0
    state = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [1e-5, 1e-5]
    assert float(rows_without_timing(run_dir)[-1]["lr"]) == pytest.approx(1e-5)


# --- keeping checkpoints -----------------------------------------------------------------


def per_epoch_files(run_dir: Path) -> list[str]:
    return sorted(path.name for path in run_dir.glob("checkpoint_e*.pth.tar"))


@pytest.mark.slow
def test_keep_last_prunes_and_keypoints_stay_across_resume(train, tmp_path):
    argv = [*TINY, "--keep-last", "2", "--save-at", "1", "3", "--run-name", "run"]
    assert train(*argv, "--epochs", "5") == 0
    run_dir = tmp_path / "outputs" / "run"
    assert per_epoch_files(run_dir) == [
        "checkpoint_e1.pth.tar",
        "checkpoint_e3.pth.tar",
        "checkpoint_e4.pth.tar",
        "checkpoint_e5.pth.tar",
    ]
    kept = torch.load(run_dir / "checkpoint_e4.pth.tar", weights_only=True)
    assert kept["progress"]["epoch"] == 4
    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "7") == 0
    assert per_epoch_files(run_dir) == [
        "checkpoint_e1.pth.tar",
        "checkpoint_e3.pth.tar",
        "checkpoint_e6.pth.tar",
        "checkpoint_e7.pth.tar",
    ]
    # A kept epoch resumes like the last checkpoint does.
    assert train("--resume", str(run_dir / "checkpoint_e3.pth.tar"), "--epochs", "4") == 0


@pytest.mark.slow
def test_a_resumed_run_never_overwrites_a_better_best_checkpoint(train, tmp_path):
    assert train(*TINY, "--epochs", "3", "--run-name", "run") == 0
    run_dir = tmp_path / "outputs" / "run"
    best = torch.load(run_dir / "model_best.pth.tar", weights_only=True)
    # Heavy label smoothing raises the lowest reachable loss (about 2.27 nats for 10 classes)
    # above the best so far, so every later evaluation is worse.
    resume = ["--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "5"]
    assert train(*resume, "--loss.label-smoothing", "0.9") == 0
    rows = rows_without_timing(run_dir)
    assert min(float(row["val_loss"]) for row in rows[3:]) > best["progress"]["best_value"]
    still = torch.load(run_dir / "model_best.pth.tar", weights_only=True)
    assert still["progress"]["epoch"] == best["progress"]["epoch"]
    last = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert last["progress"]["best_value"] == best["progress"]["best_value"]


def test_deterministic_runs_repeat_exactly(train, tmp_path):
    try:
        for name in ("a", "b"):
            assert train(*EXACT, "--deterministic", "--run-name", name) == 0
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert_same_weights(tmp_path / "outputs" / "a", tmp_path / "outputs" / "b")
    assert rows_without_timing(tmp_path / "outputs" / "a") == rows_without_timing(
        tmp_path / "outputs" / "b"
    )


@pytest.mark.slow
def test_a_checkpoint_from_before_named_losses_resumes_exactly(train, tmp_path, signal_at_step):
    # Checkpoints written before models had their own steps kept one epoch_loss_sum, no
    # "ema" entry and early stopping's count; such a run must still continue, to the same
    # result.
    outputs = tmp_path / "outputs"
    assert train(*EXACT, "--run-name", "straight") == 0
    signal_at_step(12)
    assert train(*EXACT, "--run-name", "old") == 128 + signal.SIGTERM
    path = outputs / "old" / "checkpoint.pth.tar"
    state = torch.load(path, weights_only=True)
    progress = state["progress"]
    progress["epoch_loss_sum"] = progress.pop("train_loss_sums")["loss"]
    progress["epoch_samples"] = progress.pop("train_samples")
    progress["evals_since_best"] = 0
    del state["ema"]
    torch.save(state, path)
    assert train("--resume", str(path)) == 0
    assert_same_weights(outputs / "straight", outputs / "old")
    assert rows_without_timing(outputs / "straight") == rows_without_timing(outputs / "old")


# Image inputs with random crops and flips: the augmentation's stream has to come back too.
AUGMENTED = [
    *EXACT,
    "--arch",
    "cnn",
    "--data.input-shape",
    "3",
    "8",
    "8",
    "--data.augment",
    "crop_flip",
]
# 288 training samples (the rest is the validation split) in batches of 32: 9 steps an epoch.
STEPS_PER_EPOCH = 9


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_several_stops_inside_one_epoch_resume_bit_exact(
    train, tmp_path, monkeypatch, signal_at_step, loader
):
    argv = [*AUGMENTED, "--data.loader", loader]
    outputs = tmp_path / "outputs"
    assert train(*argv, "--run-name", "straight") == 0
    checkpoint_path = outputs / "stopped" / "checkpoint.pth.tar"
    # The display counts the run's steps, not the session's, so these are run steps: three
    # stops in epoch 2 (steps 10 to 18), then one in epoch 3 after crossing the epoch end.
    for session, stop_step in enumerate([11, 13, 16, 21]):
        monkeypatch.undo()
        signal_at_step(stop_step)
        start = [*argv, "--run-name", "stopped"] if session == 0 else []
        assert train(*start or ["--resume", str(checkpoint_path)]) == 128 + signal.SIGTERM
        state = torch.load(checkpoint_path, weights_only=True)
        epoch, batch = divmod(stop_step, STEPS_PER_EPOCH)
        assert (state["progress"]["epoch"], state["loader"]["next_batch"]) == (epoch, batch)
    monkeypatch.undo()
    assert train("--resume", str(checkpoint_path)) == 0
    assert_same_weights(outputs / "straight", outputs / "stopped")
    assert rows_without_timing(outputs / "straight") == rows_without_timing(outputs / "stopped")


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_a_periodic_checkpoint_after_a_mid_epoch_resume_resumes_bit_exact(
    train, tmp_path, monkeypatch, signal_at_step, loader
):
    argv = [*AUGMENTED, "--data.loader", loader]
    outputs = tmp_path / "outputs"
    assert train(*argv, "--run-name", "straight") == 0
    checkpoint_path = outputs / "stopped" / "checkpoint.pth.tar"
    signal_at_step(11)
    assert train(*argv, "--run-name", "stopped") == 128 + signal.SIGTERM
    monkeypatch.undo()
    # The resumed session saves every 3 steps (step 12 first); a second Ctrl-C right after
    # step 13 ends it at once, as a crash would, leaving the periodic checkpoint of step 12.
    signal_at_step(13, signal.SIGINT, times=2)
    resume = ["--resume", str(checkpoint_path)]
    assert train(*resume, "--checkpoint-every-steps", "3") == 128 + signal.SIGINT
    state = torch.load(checkpoint_path, weights_only=True)
    assert (state["progress"]["step"], state["loader"]["next_batch"]) == (12, 3)
    monkeypatch.undo()
    assert train(*resume) == 0
    assert_same_weights(outputs / "straight", outputs / "stopped")
    assert rows_without_timing(outputs / "straight") == rows_without_timing(outputs / "stopped")
