"""Runs that no second process, early or late signal, crash or runaway step can corrupt: one
process per run directory, stops at any moment, checkpoints only of finite weights."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY
from tests.test_resume import assert_same_weights, rows_without_timing

# Long enough (thousands of steps) to be alive while a second process tries the directory.
LIVE = [
    "--dataset",
    "synthetic",
    "--data.num-train",
    "20000",
    "--batch-size",
    "16",
    "--epochs",
    "50",
    "--log-every",
    "10",
    "--device",
    "cpu",
    "--checkpoint-every-steps",
    "20",
]


def _start(argv: list[str], output: Path) -> subprocess.Popen:
    """train.py in a process of its own, its output to a file (a pipe nobody reads would
    fill up and stall it)."""
    with open(output, "w") as file:
        process = subprocess.Popen(
            [sys.executable, "train.py", *argv], cwd=REPO, stdout=file, stderr=subprocess.STDOUT
        )
    process.output = output
    return process


def _wait_until(condition, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early:\n{process.output.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out:\n{process.output.read_text()}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, process.output.read_text()


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


# --- one process per run directory ---------------------------------------------------------


@pytest.fixture
def live_run(tmp_path):
    """A real train.py process that has written its first periodic checkpoint."""
    run_dir = tmp_path / "outputs" / "live"
    argv = [*LIVE, "--output-dir", str(tmp_path / "outputs"), "--run-name", "live"]
    process = _start(argv, tmp_path / "live.out")
    _wait_until(lambda: (run_dir / "checkpoint.pth.tar").exists(), process)
    yield process, run_dir
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_a_second_process_cannot_resume_a_live_run(live_run, train, capsys):
    process, run_dir = live_run
    sessions = json.loads((run_dir / "run.json").read_text())["sessions"]
    checkpoint = run_dir / "checkpoint.pth.tar"
    assert train("--resume", str(checkpoint), "--epochs", "80") == 2
    message = capsys.readouterr().err
    assert f"pid {process.pid} on host {socket.gethostname()}" in message
    assert "in use by another live process" in message
    # The live run goes on untouched: no session of the refused process, its rows all kept.
    assert process.poll() is None
    record = json.loads((run_dir / "run.json").read_text())
    assert record["sessions"] == sessions and record["status"] == "running"
    _stop(process)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and len(record["sessions"]) == 1
    assert _state(checkpoint)["config"]["epochs"] == 50  # not the second process's 80


@pytest.mark.slow
def test_resume_auto_started_twice_leaves_the_live_run_alone(live_run, train, capsys):
    process, run_dir = live_run
    argv = ["--output-dir", str(run_dir.parent), "--run-name", "live", "--resume", "auto"]
    assert train(*LIVE, *argv) == 2
    assert f"pid {process.pid}" in capsys.readouterr().err
    assert process.poll() is None and run_dir.is_dir()
    assert [path.name for path in run_dir.parent.iterdir()] == ["live"]
    _stop(process)


@pytest.mark.slow
def test_the_same_run_name_is_refused_while_its_first_attempt_lives(tmp_path, train, capsys):
    """Before its first checkpoint a live run must not be mistaken for a dead attempt."""
    run_dir = tmp_path / "outputs" / "early"
    argv = [*LIVE, "--checkpoint-every-steps", "0", "--run-name", "early"]
    process = _start([*argv, "--output-dir", str(tmp_path / "outputs")], tmp_path / "early.out")
    _wait_until(lambda: (run_dir / "run.json").exists(), process)
    assert train(*argv) == 2
    assert f"pid {process.pid}" in capsys.readouterr().err
    assert [path.name for path in run_dir.parent.iterdir()] == ["early"]
    _stop(process)


@pytest.mark.slow
def test_a_run_killed_with_kill_9_is_resumable_at_once(live_run, train):
    process, run_dir = live_run
    process.kill()
    process.wait(timeout=60)
    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "1") == 0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


# --- crashes and signals before the first checkpoint ---------------------------------------


@pytest.fixture
def crash_at_step(monkeypatch):
    """Makes the run die (a crash, not a stop) right after optimizer step ``step``."""
    from toolbox.training.display import ProgressDisplay

    def arrange(step: int) -> None:
        advance = ProgressDisplay.advance

        def advance_and_crash(self) -> None:
            advance(self)
            if self.steps == step:
                raise RuntimeError("simulated crash")

        monkeypatch.setattr(ProgressDisplay, "advance", advance_and_crash)

    return arrange


def test_a_run_that_died_before_its_first_checkpoint_does_not_block_its_name(
    train, tmp_path, crash_at_step, monkeypatch, capsys
):
    outputs = tmp_path / "outputs"
    crash_at_step(3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(*TINY, "--run-name", "again")
    assert not (outputs / "again" / "checkpoint.pth.tar").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert train(*TINY, "--run-name", "again") == 0  # the same command just works
    assert "had no checkpoint" in capsys.readouterr().err
    aside = [path for path in outputs.iterdir() if path.name.startswith("again.no-checkpoint-")]
    assert len(aside) == 1 and (aside[0] / "training.log").exists()  # the log is kept
    assert json.loads((outputs / "again" / "run.json").read_text())["status"] == "finished"


def test_a_run_name_with_a_checkpoint_points_at_a_checkpoint_that_exists(train, tmp_path, capsys):
    assert train(*TINY, "--run-name", "it's done") == 0
    capsys.readouterr()
    assert train(*TINY, "--run-name", "it's done") == 2
    message = capsys.readouterr().err.replace("\n", "")
    quoted = message.split("continue it with ")[1].split(", or choose")[0]
    argv = shlex.split(quoted)
    assert argv[0] == "--resume" and Path(argv[1]).is_file()


def test_resume_auto_with_a_long_run_name_moves_a_dead_attempt_aside(
    train, tmp_path, crash_at_step, monkeypatch
):
    name = "r" * 250  # legal: a path component holds 255 bytes
    crash_at_step(2)
    with pytest.raises(RuntimeError):
        train(*TINY, "--run-name", name)
    monkeypatch.undo()
    outputs = tmp_path / "outputs"
    assert train(*TINY, "--output-dir", str(outputs), "--run-name", name, "--resume", "auto") == 0
    names = [path.name for path in outputs.iterdir()]
    assert name in names and len(names) == 2
    assert all(len(each.encode()) <= 255 for each in names)


def _signal_during(monkeypatch, owner, attribute: str, signum: int = signal.SIGTERM) -> None:
    """Sends ``signum`` to this process when ``owner.attribute`` (a function) is called."""
    original = getattr(owner, attribute)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, signalled)


@pytest.mark.parametrize("moment", ["data", "records"])
def test_a_signal_during_set_up_exits_143_and_the_same_command_runs_again(
    train, tmp_path, monkeypatch, capsys, moment
):
    """Before the run directory exists (building the data) or after (writing its records):
    either way no checkpoint is written and the same command starts the run again."""
    from toolbox.datasets.synthetic import Synthetic
    from toolbox.training import recorder as run_control

    if moment == "data":
        _signal_during(monkeypatch, Synthetic, "build")
    else:
        _signal_during(monkeypatch, run_control, "environment")
    argv = [*TINY, "--run-name", "setup"]
    assert train(*argv) == 128 + signal.SIGTERM
    message = capsys.readouterr().err
    assert "stopped by SIGTERM during set-up" in message and "Traceback" not in message
    assert not (tmp_path / "outputs" / "setup" / "checkpoint.pth.tar").exists()
    monkeypatch.undo()
    assert train(*argv) == 0


def test_a_signal_during_the_end_of_run_records_exits_143(train, tmp_path, monkeypatch):
    from toolbox.records import tensorboard

    _signal_during(monkeypatch, tensorboard, "log_hparams")
    assert train(*TINY, "--run-name", "late") == 128 + signal.SIGTERM
    record = json.loads((tmp_path / "outputs" / "late" / "run.json").read_text())
    assert record["status"] == "finished"  # it had finished: nothing is lost
    log = (tmp_path / "outputs" / "late" / "training.log").read_text()
    assert "after the run had finished" in log


def test_a_late_signal_stops_a_sweep_before_its_next_run(train, tmp_path, monkeypatch):
    from toolbox.records import tensorboard

    _signal_during(monkeypatch, tensorboard, "log_hparams")
    assert train(*TINY, "--run-name", "sweep", "--sweep", "seed=0,1") == 128 + signal.SIGTERM
    assert not (tmp_path / "outputs" / "sweep" / "seed=1").exists()


def test_a_signal_after_the_trainer_returned_still_exits_143(train, monkeypatch):
    from toolbox.training import distributed

    _signal_during(monkeypatch, distributed, "stop")
    assert train(*TINY) == 128 + signal.SIGTERM


def test_printed_commands_are_shell_quoted(train, tmp_path, signal_at_step, capsys):
    signal_at_step(4)
    assert train(*TINY, "--run-name", "odd name's run") == 128 + signal.SIGTERM
    argv = _command_after("continue with: ", capsys.readouterr().out)
    assert argv[:3] == ["python", "train.py", "--resume"] and Path(argv[3]).is_file()
    assert train(*argv[2:]) == 0
    argv = _command_after("Evaluate on the test split with: ", capsys.readouterr().out)
    assert argv[:2] == ["python", "test.py"] and Path(argv[2]).is_dir()


def _command_after(prefix: str, output: str) -> list[str]:
    """The words of the command printed after ``prefix`` on its line, as a shell reads them."""
    line = next(line for line in output.splitlines() if prefix in line)
    return shlex.split(line.split(prefix, 1)[1])


# --- checkpoints hold finite weights -------------------------------------------------------


def test_a_runaway_step_never_writes_non_finite_weights(train, tmp_path, capsys):
    """lr 1e308 overflows the weights in one step whose loss was still finite; the run must
    stop naming a checkpoint it can really resume from."""
    run_dir = tmp_path / "outputs" / "runaway"
    assert train(*TINY, "--epochs", "1", "--run-name", "runaway") == 0
    checkpoint = run_dir / "checkpoint.pth.tar"
    capsys.readouterr()
    argv = ["--resume", str(checkpoint), "--epochs", "3", "--checkpoint-every-steps", "1"]
    assert train(*argv, "--optim.lr", "1e308") == 3
    message = capsys.readouterr().err.replace("\n", "")
    assert "the weights became non-finite" in message
    assert f"the last good checkpoint is {checkpoint}" in message
    weights = _state(checkpoint)["model"].values()
    assert all(torch.isfinite(value).all() for value in weights)
    assert train("--resume", str(checkpoint), "--optim.lr", "1e-3", "--epochs", "2") == 0


# --- runtime.json --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "value", ["Infinity", "NaN", "1e400", "1e-320", "-1", "0", '"2"', "true", "5000"]
)
def test_a_bad_lr_scale_in_runtime_json_is_logged_and_ignored(
    train, tmp_path, signal_at_step, monkeypatch, value
):
    outputs = tmp_path / "outputs"
    argv = [*TINY, "--epochs", "3", "--model.dropout", "0.2"]
    assert train(*argv, "--run-name", "straight") == 0
    signal_at_step(9)  # the end of epoch 1
    assert train(*argv, "--run-name", "edited") == 128 + signal.SIGTERM
    monkeypatch.undo()
    edited = outputs / "edited"
    (edited / "runtime.json").write_text(f'{{"lr_scale": {value}}}\n')
    assert train("--resume", str(edited / "checkpoint.pth.tar"), "--epochs", "3") == 0
    log = (edited / "training.log").read_text()
    assert "runtime.json ignored: lr_scale is" in log and "(1e-06, 1000]" in log
    assert log.count("runtime.json ignored") == 1  # said once, not at every epoch
    assert_same_weights(outputs / "straight", edited)
    assert rows_without_timing(outputs / "straight") == rows_without_timing(edited)
