"""``train.py --sweep``: the grid, summary.csv over seeds, skipping and resuming on a second
call, failures that do not stop the sweep, and malformed --sweep options refused up front."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY

GRID = ["--sweep", "optim.lr=0.01,0.001", "--sweep", "seed=0,1"]
GRID_RUNS = [f"optim.lr={lr},seed={seed}" for lr in ("0.01", "0.001") for seed in (0, 1)]


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def summary(sweep: Path, key: str | None = None) -> pd.DataFrame:
    return pd.read_csv(sweep / "summary.csv", dtype={key: str} if key else None)


def checkpoint_times(sweep: Path, names: list[str]) -> dict[str, int]:
    return {name: (sweep / name / "checkpoint.pth.tar").stat().st_mtime_ns for name in names}


def test_grid_runs_every_combination_and_averages_seeds(train, tmp_path, capsys):
    assert train(*TINY, *GRID, "--run-name", "grid") == 0
    sweep = tmp_path / "outputs" / "grid"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted(GRID_RUNS)
    for name in GRID_RUNS:
        config = json.loads((sweep / name / "config.json").read_text())
        assert f"optim.lr={config['optim']['lr']:g},seed={config['seed']}" == name
        assert config["epochs"] == 2 and config["dataset"] == "synthetic"  # the base args
        assert record(sweep / name)["status"] == "finished"

    table = summary(sweep, "optim.lr")
    assert list(table.columns) == ["optim.lr", "metric", "mean", "std", "runs", "failed"]
    assert table["optim.lr"].tolist() == ["0.01", "0.001"]
    for _, row in table.iterrows():
        bests = [record(sweep / f"optim.lr={row['optim.lr']},seed={s}")["best"] for s in (0, 1)]
        assert all(best["metric"] == "val_loss" for best in bests)
        values = [best["value"] for best in bests]
        assert row["metric"] == "val_loss" and row["runs"] == 2 and row["failed"] == 0
        assert row["mean"] == pytest.approx(statistics.fmean(values))
        assert row["std"] == pytest.approx(statistics.stdev(values))  # ddof=1
    out = capsys.readouterr().out
    assert "summary.csv" in out and "0.001" in out  # the printed table

    # The same sweep again trains nothing: every run is skipped, no checkpoint is rewritten.
    before = checkpoint_times(sweep, GRID_RUNS)
    assert train(*TINY, *GRID, "--run-name", "grid") == 0
    assert checkpoint_times(sweep, GRID_RUNS) == before
    assert capsys.readouterr().out.count("finished before; skipped") == 4
    pd.testing.assert_frame_equal(summary(sweep, "optim.lr"), table)

    # Other options into the same sweep directory would mix two sweeps: refused up front.
    assert train(*TINY, "--eval-every", "2", *GRID, "--run-name", "grid") == 2
    assert "(--eval-every); give the same options" in " ".join(capsys.readouterr().err.split())
    assert checkpoint_times(sweep, GRID_RUNS) == before


def sigterm_in_run(monkeypatch, run: int, step: int) -> None:
    """SIGTERM to this process after optimizer step ``step`` of the ``run``-th run (like the
    conftest ``signal_at_step``, which would fire in every run of the sweep)."""
    from toolbox.training.display import ProgressDisplay

    displays: list[ProgressDisplay] = []
    init, advance = ProgressDisplay.__init__, ProgressDisplay.advance

    def counting_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        displays.append(self)

    def advance_and_signal(self) -> None:
        advance(self)
        if len(displays) == run and displays[-1] is self and self.steps == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ProgressDisplay, "__init__", counting_init)
    monkeypatch.setattr(ProgressDisplay, "advance", advance_and_signal)


def test_interrupted_sweep_run_again_finishes_only_what_is_missing(
    train, tmp_path, capsys, monkeypatch
):
    args = [*TINY, "--sweep", "seed=0,1,2", "--run-name", "cut"]
    sweep = tmp_path / "outputs" / "cut"
    sigterm_in_run(monkeypatch, run=2, step=3)  # mid-epoch 1 of seed=1
    assert train(*args) == 143
    assert record(sweep / "seed=0")["status"] == "finished"
    assert record(sweep / "seed=1")["status"] == "interrupted"
    assert not (sweep / "seed=2").exists()
    table = summary(sweep)  # written for what finished
    assert table[["metric", "runs", "failed"]].values.tolist() == [["val_loss", 1, 0]]
    assert "run the same command" in capsys.readouterr().out

    monkeypatch.undo()
    (sweep / "seed=2").mkdir()  # as if a crash had left a directory without a checkpoint
    before = checkpoint_times(sweep, ["seed=0"])
    assert train(*args) == 0
    out = capsys.readouterr().out
    assert "seed=0: finished before; skipped" in out
    assert "seed=1: interrupted; resuming from" in out
    assert "seed=2: unknown, no checkpoint; moved to seed=2.partial-" in out
    assert checkpoint_times(sweep, ["seed=0"]) == before
    resumed = record(sweep / "seed=1")
    assert resumed["status"] == "finished" and len(resumed["sessions"]) == 2
    assert pd.read_csv(sweep / "seed=1" / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert [p.name.startswith("seed=2.partial-") for p in sweep.glob("seed=2.*")] == [True]
    assert record(sweep / "seed=2")["status"] == "finished"
    values = [record(sweep / f"seed={seed}")["best"]["value"] for seed in range(3)]
    table = summary(sweep)
    assert table["runs"].tolist() == [3] and table["failed"].tolist() == [0]
    assert table["mean"][0] == pytest.approx(statistics.fmean(values))
    assert table["std"][0] == pytest.approx(statistics.stdev(values))


@pytest.mark.slow
def test_a_run_stopped_after_its_last_step_counts_as_finished(train, tmp_path, monkeypatch):
    args = [*TINY, "--sweep", "seed=0,1", "--run-name", "late"]
    sweep = tmp_path / "outputs" / "late"
    sigterm_in_run(monkeypatch, run=2, step=18)  # TINY: 9 steps per epoch, 2 epochs
    assert train(*args) == 143
    # The stop came in the last step: the run is complete and says so; the sweep stops.
    assert record(sweep / "seed=1")["status"] == "finished"
    monkeypatch.undo()
    assert train(*args) == 0  # not resumed ("already trained"): skipped
    assert summary(sweep)["runs"].tolist() == [2]


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(train, tmp_path, capsys):
    # An empty validation split fails in the first run, after the sweep has started.
    assert train(*TINY, "--sweep", "data.val-fraction=0.001,0.1", "--run-name", "f") == 1
    sweep = tmp_path / "outputs" / "f"
    assert record(sweep / "data.val-fraction=0.1")["status"] == "finished"
    table = summary(sweep, "data.val-fraction").set_index("data.val-fraction")
    assert table.loc["0.001", ["runs", "failed"]].tolist() == [0, 1]
    assert math.isnan(table.loc["0.001", "mean"])
    assert table.loc["0.1", ["runs", "failed", "std"]].tolist() == [1, 0, 0.0]
    err = capsys.readouterr().err
    assert "validation split of 'synthetic' is empty" in err


@pytest.mark.slow
def test_a_sweep_run_again_over_damaged_records_carries_on(train, tmp_path, capsys):
    args = [*TINY, "--sweep", "seed=0,1,2", "--run-name", "hurt"]
    assert train(*args) == 0
    sweep = tmp_path / "outputs" / "hurt"
    sound = record(sweep / "seed=0")
    (sweep / "seed=0" / "run.json").write_text("[]")  # its checkpoint holds the whole run
    (sweep / "seed=1" / "config.json").write_text('{"arch": ')  # its checkpoint has the options
    (sweep / "seed=2" / "checkpoint.pth.tar").unlink()
    (sweep / "seed=2" / "run.json").write_text('{"sessions": 5}')  # and nothing to resume from
    capsys.readouterr()
    before = checkpoint_times(sweep, ["seed=0", "seed=1"])
    assert train(*args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "seed=0: damaged run.json, but its checkpoint holds the whole run; recorded" in out
    assert "seed=1: finished before; skipped" in out
    assert "seed=2: damaged, no checkpoint; moved to seed=2.partial-" in out
    assert checkpoint_times(sweep, ["seed=0", "seed=1"]) == before  # neither trained again
    rebuilt = record(sweep / "seed=0")
    [aside] = (sweep / "seed=0").glob("run.json.damaged-*")
    assert rebuilt["damaged_record"] == aside.name and aside.read_text() == "[]"
    assert (rebuilt["run_id"], rebuilt["status"], rebuilt["best"]) == (
        sound["run_id"],
        "finished",
        sound["best"],
    )
    values = [record(sweep / f"seed={seed}")["best"]["value"] for seed in range(3)]
    table = summary(sweep)
    assert table[["runs", "failed"]].values.tolist() == [[3, 0]]
    assert table["mean"][0] == pytest.approx(statistics.fmean(values))

    # Without the checkpoint, nothing tells which options the run with a damaged
    # config.json had: counting it in this sweep could mix two sweeps.
    (sweep / "seed=1" / "checkpoint.pth.tar").unlink()
    assert train(*args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("error:") == 1 and f"{sweep / 'seed=1' / 'config.json'} is unreadable" in err
    assert f"move {sweep / 'seed=1'} aside to train it again" in err


def test_a_sweep_moves_aside_a_long_named_run_without_checkpoint_unless_in_use(
    train, tmp_path, capsys
):
    from toolbox.records.lock import RunLock

    name = "optim.lr=0.001".ljust(250, "0")  # a legal name, too long for a ".partial-" suffix
    sweep = tmp_path / "outputs" / "long"
    (sweep / name).mkdir(parents=True)  # an attempt that died before its first checkpoint
    args = [*TINY, "--sweep", name, "--run-name", "long"]
    lock = RunLock.acquire(sweep / name, "the test")  # as if another process were training it
    try:
        assert train(*args) == 2
    finally:
        lock.release()
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("error:") == 1 and "--sweep: " in err
    assert "is in use by another live process" in err
    assert [path.name for path in sweep.iterdir() if path.is_dir()] == [name]  # not moved

    assert train(*args) == 0
    [aside] = sweep.glob("*.partial-*")
    assert len(aside.name.encode()) <= 255 and ".partial-" in aside.name  # shortened, kept
    assert record(sweep / name)["status"] == "finished"


def test_summary_from_hand_written_records(tmp_path):
    from toolbox.cli.sweep import summarize

    runs = {  # name: (status, best value)
        "lr=1,seed=0": ("finished", 1.0),
        "lr=1,seed=1": ("finished", 2.0),
        "lr=1,seed=2": ("finished", 4.0),
        "lr=2,seed=0": ("finished", 0.5),
        "lr=2,seed=1": ("failed", None),
        "lr=2,seed=2": ("interrupted", None),
        "lr=3,seed=0": (None, None),  # never run
    }
    for name, (status, value) in runs.items():
        if status:
            (tmp_path / name).mkdir()
            best = {"metric": "val_accuracy", "value": value, "epoch": 1 if value else None}
            data = {"run_id": name, "status": status, "best": best, "epochs_done": 1}
            (tmp_path / name / "run.json").write_text(json.dumps(data))
    combos = {name: dict(part.split("=") for part in name.split(",")) for name in runs}
    monitors = dict.fromkeys(runs, "val_accuracy")
    table = summarize(tmp_path, combos, monitors, failed={"lr=3,seed=0"})
    assert table.to_dict("list") == {
        "lr": ["1", "2", "3"],
        "metric": ["val_accuracy"] * 3,
        "mean": [pytest.approx(7 / 3), 0.5, pytest.approx(math.nan, nan_ok=True)],
        "std": [
            pytest.approx(statistics.stdev([1.0, 2.0, 4.0])),
            0.0,
            pytest.approx(math.nan, nan_ok=True),
        ],
        "runs": [3, 1, 0],
        "failed": [0, 1, 1],
    }
    assert (tmp_path / "summary.csv").exists()


def test_combination_arguments():
    from toolbox.cli.sweep import _arguments

    combo = {"compile": "false", "deterministic": "True", "model.hidden-sizes": "16 8", "seed": "3"}
    assert _arguments(combo, {"compile", "deterministic"}) == [
        "--no-compile",
        "--deterministic",
        "--model.hidden-sizes",
        "16",
        "8",
        "--seed",
        "3",
    ]


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--sweep", "seed"], "--sweep seed: write KEY=VALUE1,VALUE2"),
        (["--sweep", "seed="], "--sweep seed=: write KEY=VALUE1,VALUE2"),
        (["--sweep", "seed=0,,1"], "--sweep seed=0,,1: write KEY="),
        (["--sweep", "=0,1"], "--sweep =0,1: write KEY="),
        (["--sweep"], "argument --sweep: expected one argument"),
        (["--sweep", "colour=1,2"], "--sweep colour=1,2: colour is not an option"),
        (["--sweep", "optim.colour=1"], "--sweep optim.colour=1: optim.colour is not an option"),
        (["--sweep", "run-name=a,b"], "--sweep run-name=a,b: run-name is not an option"),
        (["--sweep", "optim.momentum=0.9"], "--sweep optim.momentum=0.9: --optim.momentum is an"),
        (["--sweep", "optim.lr=0.1,abc"], "--sweep optim.lr=0.1,abc: Error parsing --optim.lr"),
        (["--sweep", "seed=0,-1"], "--sweep seed=0,-1: Invalid configuration"),
        (["--sweep", "arch=mlp,nope"], "--sweep arch=mlp,nope: --arch: unknown model 'nope'"),
        (["--sweep", "model.hidden-sizes=16 8,0"], "--sweep model.hidden-sizes=16 8,0: Invalid"),
        (["--sweep", "compile=maybe"], "--sweep compile=maybe: --compile is a flag"),
        (["--sweep", "seed=0", "--sweep", "seed=1"], "--sweep seed=1: --seed is swept twice"),
        (["--seed", "1", "--sweep", "seed=0,1"], "--seed is also given as an option"),
        (["--sweep", "seed=0,0"], "--sweep seed=0,0: a value is listed twice"),
        (["--sweep", "seed=0", "--resume", "x.pth.tar"], "--resume and --sweep exclude"),
        (["--sweep", "seed=0", "--run-name", "a/b"], "--run-name is 'a/b'"),
    ],
)
def test_malformed_sweep_is_refused_before_any_run(train, tmp_path, capsys, argv, expect):
    assert train(*TINY, *argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and expect in " ".join(err.split())
    assert not (tmp_path / "outputs").exists()
