"""``train.py --search optuna``: trials as run directories, summary.csv and the rerun command,
pruning that stops a run as early stopping does, workers sharing one study, a killed worker's
trial failed and taken over, and every malformed option refused before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

optuna = pytest.importorskip("optuna")

DIGITS = ["--dataset", "digits", "--epochs", "2", "--device", "cpu"]
SPACE = ["--search-space", "optim.lr=log:1e-4:1e-1"]


def search(*options: str, trials: int = 3) -> list[str]:
    return [*options, "--search", "optuna", "--search-trials", str(trials)]


def load_study(search_dir: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{search_dir / 'study.db'}")


@pytest.mark.slow
def test_trials_are_runs_summarised_with_a_command_that_reruns_the_best(train, tmp_path, capsys):
    from toolbox.cli.parse import parse_training_config

    assert train(*search(*DIGITS, *SPACE, "--run-name", "lr")) == 0
    search_dir = tmp_path / "outputs" / "lr"
    table = pd.read_csv(search_dir / "summary.csv")
    assert list(table.columns) == ["number", "optim.lr", "metric", "value", "state", "run_dir"]
    assert table["number"].tolist() == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    for row in table.itertuples():
        run_dir = Path(row.run_dir)
        assert run_dir == search_dir / f"trial_{row.number}"
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "finished" and record["best"]["value"] == row.value
        assert json.loads((run_dir / "config.json").read_text())["optim"]["lr"] == row._2
        assert 1e-4 <= row._2 <= 1e-1
    out = " ".join(capsys.readouterr().out.split())
    best = table.loc[table["value"].idxmin()]
    assert f"best: trial {best['number']}," in out
    assert "optuna-dashboard sqlite:///" in out
    rerun = out.split("train it again: ")[1].split(" browse")[0].split()
    config_file = search_dir / f"trial_{best['number']}" / "config.json"
    assert rerun[:4] == ["python", "train.py", "--config", str(config_file)]
    rerun_config = parse_training_config(rerun[2:])
    assert rerun_config.optim.lr == best["optim.lr"] and rerun_config.run_name == "lr_best"

    # The same command again finds the study complete: no trial is trained or added.
    assert train(*search(*DIGITS, *SPACE, "--run-name", "lr")) == 0
    assert len(load_study(search_dir, "lr").trials) == 3
    assert train(*DIGITS, "--search", "optuna", "--search-summary", "--run-name", "lr") == 0
    assert "best: trial" in capsys.readouterr().out
    # Other options would mix two searches in one study: refused.
    assert train(*search(*DIGITS, "--eval-every", "2", *SPACE, "--run-name", "lr")) == 2
    assert "was started with other options" in capsys.readouterr().err


def test_a_hopeless_trial_is_pruned_and_its_run_ends_early(train, tmp_path):
    search_dir = tmp_path / "outputs" / "prune"
    search_dir.mkdir(parents=True)
    study = optuna.create_study(
        study_name="prune", storage=f"sqlite:///{search_dir / 'study.db'}", direction="minimize"
    )
    for lr in ("0.01", "0.01", "0.000001"):  # two good trials first: the median to beat
        study.enqueue_trial({"optim.lr": lr})
    epochs = ["--epochs", "4"]
    options = ["--search-space", "optim.lr=cat:0.01,0.000001", "--search-pruner", "median"]
    assert train(*search(*DIGITS, *epochs, *options, "--run-name", "prune")) == 0
    table = pd.read_csv(search_dir / "summary.csv", dtype={"optim.lr": str})
    assert table["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = search_dir / "trial_2"
    assert len(pd.read_csv(pruned / "metrics.csv")) == 1  # stopped after its first evaluation
    record = json.loads((pruned / "run.json").read_text())
    assert record["status"] == "finished" and "pruned by Optuna's median pruner" in str(record)
    assert len(pd.read_csv(search_dir / "trial_0" / "metrics.csv")) == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--search-space", "optim.lr=log:1e-1"], "log:LOW:HIGH, two numbers"),
        (["--search-space", "optim.lr=log:0:1"], "LOW above 0"),
        (["--search-space", "optim.lr=normal:0:1"], "KIND being one of"),
        (["--search-space", "optim.speed=float:0:1"], "optim.speed is not an option"),
        (["--search-space", "model.dropout=float:0:5"], "--search-space model.dropout=float:0:5"),
        ([*SPACE, "--search-sampler", "annealing"], "--search-sampler annealing: choose"),
        ([*SPACE, "--search-pruner", "hyperband"], "--search-pruner hyperband: choose"),
        ([*SPACE, "--search-sampler", "grid"], "takes int: and cat: entries only"),
        ([*SPACE, "--search-storage", "sqlite:////no/such/dir/x.db"], "cannot open it"),
        ([*SPACE, "--search-storage", "nosuchdb://x"], "cannot open it"),
        ([*SPACE, "--sweep", "seed=0,1"], "--search and --sweep exclude each other"),
    ],
)
def test_bad_input_is_one_message_and_creates_nothing(train, tmp_path, capsys, options, message):
    assert train(*search(*DIGITS, *options, "--run-name", "bad")) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "outputs").exists()


def test_zero_trials_no_run_name_or_no_optuna_are_refused(train, tmp_path, capsys, monkeypatch):
    assert train(*search(*DIGITS, *SPACE, "--run-name", "x", trials=0)) == 2
    assert "--search-trials 0" in capsys.readouterr().err
    assert train(*search(*DIGITS, *SPACE)) == 2
    assert "--search needs --run-name" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    assert train(*search(*DIGITS, *SPACE, "--run-name", "x")) == 2
    assert "uv sync --extra search" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def worker(output_dir: Path, *options: str) -> subprocess.Popen:
    """A train.py process of its own, as on another core or machine."""
    command = [sys.executable, "train.py", *options, "--output-dir", str(output_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_two_workers_share_one_study_and_finish_exactly_n_trials(tmp_path):
    options = search(*DIGITS, *SPACE, "--run-name", "shared", trials=5)
    workers = [worker(tmp_path, *options) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in workers]
    assert [process.returncode for process in workers] == [0, 0], outputs
    trials = load_study(tmp_path / "shared", "shared").trials
    assert [trial.number for trial in trials] == [0, 1, 2, 3, 4]  # none twice, none extra
    assert {trial.state.name for trial in trials} == {"COMPLETE"}
    started = [line for out in outputs for line in out.splitlines() if line.startswith("[trial ")]
    assert len(started) == 5
    assert all(any(line.startswith("[trial ") for line in out.splitlines()) for out in outputs)
    assert sorted(p.name for p in (tmp_path / "shared").glob("trial_*")) == [
        f"trial_{n}" for n in range(5)
    ]


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_and_a_restart_completes_the_study(tmp_path):
    long_trials = ["--epochs", "200", "--search-heartbeat", "1"]
    options = search(*DIGITS, *long_trials, *SPACE, "--run-name", "crash", trials=2)
    process = worker(tmp_path, *options)
    metrics = tmp_path / "crash" / "trial_0" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not metrics.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metrics.exists()
    process.send_signal(signal.SIGKILL)
    process.wait()

    restarted = worker(tmp_path, *options)
    out = restarted.communicate(timeout=300)[0]
    assert restarted.returncode == 0, out
    trials = load_study(tmp_path / "crash", "crash").trials
    states = {trial.number: trial.state.name for trial in trials}
    assert states[0] == "FAIL"  # its heartbeat stopped: failed, and retried once
    assert list(states.values()).count("COMPLETE") == 2 and len(states) == 3
    assert trials[1].params == trials[0].params  # the retry of the killed trial
    table = pd.read_csv(tmp_path / "crash" / "summary.csv")
    assert table["state"].tolist() == ["FAIL", "COMPLETE", "COMPLETE"]
