"""``--sweep-workers`` / ``--sweep-devices``: the same runs and summary.csv as the sequential
sweep, finished runs skipped on a second call, and each worker's own threads and device."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO

DIGITS = ["--dataset", "digits", "--epochs", "2", "--device", "cpu"]
GRID = ["--sweep", "optim.lr=0.01,0.001"]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the workers start `python train.py`


@pytest.mark.slow
def test_two_workers_give_the_sequential_sweeps_summary_and_skip_finished_runs(
    train, tmp_path, capsys, in_repo
):
    assert train(*DIGITS, *GRID, "--run-name", "one", output_dir=tmp_path) == 0
    assert (
        train(*DIGITS, *GRID, "--sweep-workers", "2", "--run-name", "two", output_dir=tmp_path) == 0
    )
    out = capsys.readouterr().out
    assert out.count("OMP_NUM_THREADS=1") == 2  # 2 cores split between 2 workers
    sequential = pd.read_csv(tmp_path / "one" / "summary.csv", dtype={"optim.lr": str})
    parallel = pd.read_csv(tmp_path / "two" / "summary.csv", dtype={"optim.lr": str})
    assert parallel[["optim.lr", "metric", "runs", "failed"]].equals(
        sequential[["optim.lr", "metric", "runs", "failed"]]
    )
    assert parallel["runs"].tolist() == [1, 1]
    # Same seed and data: the best metric matches up to the threads' float rounding.
    assert parallel["mean"].tolist() == pytest.approx(sequential["mean"].tolist(), rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").glob("*.out")) == [
        "optim.lr=0.001.out",
        "optim.lr=0.01.out",
    ]

    assert (
        train(*DIGITS, *GRID, "--sweep-workers", "2", "--run-name", "two", output_dir=tmp_path) == 0
    )
    out = capsys.readouterr().out
    assert out.count("finished before; skipped") == 2 and "worker 0" not in out


def test_each_device_gets_its_own_worker(train, tmp_path, capsys, monkeypatch, in_repo):
    from toolbox.cli import sweep_workers

    launched: list[tuple[list[str], dict[str, str]]] = []

    def launch(command, env, output):
        launched.append((command, env))
        return subprocess.Popen([sys.executable, "-c", "pass"])  # no training: the plumbing

    monkeypatch.setattr(sweep_workers, "_launch", launch)
    grid = ["--sweep", "seed=0,1,2"]
    args = [*DIGITS, *grid, "--sweep-devices", "0,1", "--run-name", "gpus"]
    assert train(*args, output_dir=tmp_path) == 0
    assert len(launched) == 3
    devices = [env["CUDA_VISIBLE_DEVICES"] for _, env in launched]
    assert devices[:2] == ["0", "1"] and devices[2] in ("0", "1")
    for (command, _), seed in zip(launched, range(3), strict=True):
        assert command[:2] == [sys.executable, "train.py"]
        assert command[-4:] == [
            "--output-dir",
            str(tmp_path / "gpus"),
            "--run-name",
            f"seed={seed}",
        ]
        assert "--seed" in command and command[command.index("--seed") + 1] == str(seed)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--sweep-workers", "0"], "--sweep-workers 0: give the number"),
        (["--sweep-devices", "0,0"], "--sweep-devices 0,0: list distinct"),
        (["--sweep-workers", "3", "--sweep-devices", "0,1"], "each device gets one worker"),
    ],
)
def test_bad_worker_options_are_refused(train, tmp_path, capsys, options, message, in_repo):
    assert train(*DIGITS, *GRID, *options, "--run-name", "bad", output_dir=tmp_path) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "bad").exists()
