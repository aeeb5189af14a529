"""Run records (run.json), the runs table, early stopping and runtime.json."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch

import toolbox
from tests.conftest import TINY, run_main
from toolbox.records.run_record import RunRecord


def runs(*argv: str) -> int:
    from toolbox.cli.runs import main

    return run_main(main, ["runs", *argv])


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_a_finished_run_records_how_it_was_made_and_how_it_went(train, tmp_path):
    assert train(*TINY, "--run-name", "done") == 0
    run_dir = tmp_path / "outputs" / "done"
    data = record(run_dir)
    assert data["status"] == "finished" and data["error"] is None
    assert (data["arch"], data["dataset"], data["epochs_done"], data["epochs"]) == (
        "mlp",
        "synthetic",
        2,
        2,
    )
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert data["best"]["metric"] == "val_loss"
    assert data["best"]["value"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    (session,) = data["sessions"]
    assert session["hostname"] and session["started"] and session["ended"]
    assert session["command"].startswith("python ")
    assert {"commit", "branch", "dirty"} <= set(session["git"])
    assert data["duration_s"] > 0
    state = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert state["run_id"] == data["run_id"]


def test_resuming_adds_a_session_to_the_same_record(train, tmp_path):
    assert train(*TINY, "--run-name", "r") == 0
    run_dir = tmp_path / "outputs" / "r"
    first = record(run_dir)
    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "3") == 0
    again = record(run_dir)
    assert again["run_id"] == first["run_id"] and len(again["sessions"]) == 2
    assert again["epochs_done"] == 3 and again["status"] == "finished"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def dirty_repo(tmp_path: Path, monkeypatch) -> Path:
    """A git checkout of a one-file toolbox with an uncommitted change; its source file."""
    repo = tmp_path / "repo"
    (repo / "toolbox").mkdir(parents=True)
    source = repo / "toolbox" / "__init__.py"
    source.write_text("a = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "x", "--allow-empty")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "code")
    source.write_text("a = 2\n")
    monkeypatch.setattr(toolbox, "__file__", str(source))
    return source


def test_uncommitted_code_is_saved_as_a_diff(tmp_path, monkeypatch):
    from toolbox.config.training import TrainingConfig

    dirty_repo(tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunRecord(run_dir).start(TrainingConfig())
    session = record(run_dir)["sessions"][0]
    assert session["git"]["dirty"] is True and session["diff"] == "code.diff"
    assert "+a = 2" in (run_dir / "code.diff").read_text()


def test_git_state_reads_commit_branch_and_changes_from_one_status(tmp_path, monkeypatch):
    from toolbox.records.run_record import git_state

    source = dirty_repo(tmp_path, monkeypatch)
    repo = source.parent.parent

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return result.stdout.strip()

    commit, branch = git("rev-parse", "HEAD"), git("rev-parse", "--abbrev-ref", "HEAD")
    assert git_state(source.parent) == {"commit": commit, "branch": branch, "dirty": True}
    _git(repo, "checkout", "-q", "--", ".")
    assert git_state(source.parent) == {"commit": commit, "branch": branch, "dirty": False}
    (repo / "notes.txt").write_text("untracked\n")
    assert git_state(source.parent)["dirty"] is True
    _git(repo, "checkout", "-q", "--detach")
    assert git_state(source.parent)["branch"] == "HEAD"  # as rev-parse --abbrev-ref names it
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")  # a checkout without a commit
    assert git_state(empty) == {"commit": None, "branch": None, "dirty": None}


def test_outside_git_the_source_files_are_hashed(tmp_path, monkeypatch):
    from toolbox.config.training import TrainingConfig

    package = tmp_path / "plain" / "toolbox"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("a = 1\n")
    monkeypatch.setattr(toolbox, "__file__", str(package / "__init__.py"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunRecord(run_dir).start(TrainingConfig())
    session = record(run_dir)["sessions"][0]
    assert session["git"]["commit"] is None and set(session["source_sha256"]) == {"__init__.py"}


@pytest.fixture
def mixed_runs(train, tmp_path, signal_at_step, monkeypatch, poisoned_once):
    """A directory with a finished, an interrupted, a failed and a crashed run."""
    outputs = tmp_path / "outputs"
    assert train(*TINY, "--run-name", "finished") == 0
    assert train(*TINY, "--arch", "cnn", "--run-name", "other-arch") == 0
    signal_at_step(3)
    assert train(*TINY, "--run-name", "interrupted") == 143
    monkeypatch.undo()
    poisoned_once()
    assert train(*TINY, "--run-name", "failed") == 3
    crashed = record(outputs / "finished")
    crashed.update(status="running", run_id="c")
    crashed["sessions"][-1]["pid"] = 2**22 + 12345  # no such process
    (outputs / "crashed").mkdir()
    (outputs / "crashed" / "run.json").write_text(json.dumps(crashed))
    (outputs / "crashed" / "config.json").write_text(
        (outputs / "finished" / "config.json").read_text()
    )
    return outputs


@pytest.fixture
def poisoned_once(monkeypatch):
    from toolbox.datasets.synthetic import Synthetic

    def poison() -> None:
        build = Synthetic.build

        def poisoned_build(self):
            splits = build(self)
            splits.train["input"][:] = float("nan")
            return splits

        monkeypatch.setattr(Synthetic, "build", poisoned_build)

    return poison


def test_the_runs_table_lists_every_status_newest_first(mixed_runs, capsys):
    assert runs(str(mixed_runs), "--csv") == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    status = {row["run"]: row["status"] for row in rows}
    assert status == {
        "finished": "finished",
        "other-arch": "finished",
        "interrupted": "interrupted",
        "failed": "failed",
        "crashed": "crashed",
    }
    dates = [row["date"] for row in rows]
    assert dates == sorted(dates, reverse=True)
    assert rows[0]["epochs"] and next(r for r in rows if r["run"] == "finished")["best"]

    assert runs(str(mixed_runs), "--csv", "--arch", "cnn") == 0
    assert [r["run"] for r in csv.DictReader(capsys.readouterr().out.splitlines())] == [
        "other-arch"
    ]
    assert runs(str(mixed_runs), "--csv", "--status", "failed") == 0
    assert "failed" in capsys.readouterr().out
    assert runs(str(mixed_runs)) == 0
    assert "5 runs" in capsys.readouterr().out


@pytest.mark.slow
def test_failed_and_interrupted_runs_say_why(mixed_runs):
    assert "non-finite" in record(mixed_runs / "failed")["error"]
    assert "SIGTERM" in record(mixed_runs / "interrupted")["stop_reason"]


@pytest.mark.slow
def test_runs_show_diff_and_which(mixed_runs, capsys):
    assert runs("show", str(mixed_runs / "finished")) == 0
    shown = capsys.readouterr().out
    assert "finished" in shown and "optim.lr" in shown and "python " in shown
    assert runs("diff", str(mixed_runs / "finished"), str(mixed_runs / "other-arch")) == 0
    shown = capsys.readouterr().out
    assert "arch" in shown and "model.hidden_sizes" in shown and "optim.lr" not in shown
    checkpoint = mixed_runs / "other-arch" / "model_best.pth.tar"
    copy = mixed_runs.parent / "somewhere-else.pth.tar"
    copy.write_bytes(checkpoint.read_bytes())
    assert runs("which", str(copy), "--dir", str(mixed_runs)) == 0
    assert f"run {mixed_runs / 'other-arch'}" in capsys.readouterr().out


def test_runs_mistakes_get_one_message(tmp_path, capsys):
    assert runs(str(tmp_path / "missing")) == 2
    assert "not a directory of runs" in capsys.readouterr().err
    assert runs("show", str(tmp_path)) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert runs("diff", "a") == 2
    assert "two runs" in capsys.readouterr().err


# --- damaged records ---------------------------------------------------------------------

# What a cut-short write, a stray editor or a broken disk leaves in run.json.
DAMAGED_RECORDS = {
    "truncated": lambda sound: sound[: len(sound) // 2],
    "list": lambda sound: b"[]",
    "sessions-number": lambda sound: b'{"sessions": 5}',
    "binary": lambda sound: b"\x00\x89PNG\r\n",
}


@pytest.fixture
def finished_run(train, tmp_path) -> Path:
    assert train(*TINY, "--run-name", "sound") == 0
    return tmp_path / "outputs" / "sound"


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGED_RECORDS))
def test_resuming_over_a_damaged_run_json_keeps_it_aside_and_the_run_id(
    finished_run, train, damage
):
    sound = (finished_run / "run.json").read_bytes()
    damaged = DAMAGED_RECORDS[damage](sound)
    (finished_run / "run.json").write_bytes(damaged)
    checkpoint = finished_run / "checkpoint.pth.tar"
    assert train("--resume", str(checkpoint), "--epochs", "3") == 0
    [aside] = finished_run.glob("run.json.damaged-*")
    assert aside.read_bytes() == damaged  # kept as it was
    fresh = record(finished_run)
    # The checkpoint's id, so that `runs which` still finds the run from its checkpoints.
    assert fresh["run_id"] == json.loads(sound)["run_id"]
    assert fresh["run_id"] == torch.load(checkpoint, weights_only=True)["run_id"]
    assert fresh["status"] == "finished" and fresh["epochs_done"] == 3
    assert fresh["damaged_record"] == aside.name and len(fresh["sessions"]) == 1
    log = (finished_run / "training.log").read_text()
    assert "run.json is damaged (" in log and f"kept it as {aside.name}" in log


def test_a_fresh_record_never_overwrites_an_earlier_sessions_code_diff(tmp_path, monkeypatch):
    from toolbox.config.training import TrainingConfig

    source = dirty_repo(tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunRecord(run_dir).start(TrainingConfig())
    (run_dir / "run.json").write_text("{")  # damaged before the next session
    source.write_text("a = 3\n")
    RunRecord(run_dir).start(TrainingConfig())
    assert "+a = 2" in (run_dir / "code.diff").read_text()  # the first session's code
    diff = record(run_dir)["sessions"][0]["diff"]
    assert diff != "code.diff" and "+a = 3" in (run_dir / diff).read_text()


def test_the_runs_table_shows_a_damaged_record_as_a_damaged_row(finished_run, capsys):
    outputs = finished_run.parent
    good = record(finished_run)
    for damage, make in DAMAGED_RECORDS.items():
        (outputs / damage).mkdir()
        (outputs / damage / "run.json").write_bytes(make(json.dumps(good).encode()))
    (outputs / "status-number").mkdir()
    (outputs / "status-number" / "run.json").write_text(json.dumps({**good, "status": 3}))
    alive_elsewhere = {**good, "status": "running", "run_id": "x"}
    alive_elsewhere["sessions"] = [{**good["sessions"][0], "pid": 2**70}]  # no such process
    (outputs / "huge-pid").mkdir()
    (outputs / "huge-pid" / "run.json").write_text(json.dumps(alive_elsewhere))

    assert runs(str(outputs), "--csv") == 0
    out, err = capsys.readouterr()
    status = {row["run"]: row["status"] for row in csv.DictReader(out.splitlines())}
    assert status == {
        "sound": "finished",
        "huge-pid": "crashed",
        "status-number": "damaged",
        **dict.fromkeys(DAMAGED_RECORDS, "damaged"),
    }
    assert f"{outputs / 'status-number' / 'run.json'} is damaged: status is 3" in err
    assert err.count("is damaged") == 5
    assert runs(str(outputs), "--status", "damaged") == 0
    assert "5 runs" in capsys.readouterr().out
    # The damaged records do not hide the sound one from `runs which`.
    assert runs("which", str(finished_run / "checkpoint.pth.tar"), "--dir", str(outputs)) == 0
    assert f"run {finished_run}" in capsys.readouterr().out


def test_runs_show_and_diff_read_a_damaged_config_from_the_checkpoint(finished_run, capsys):
    (finished_run / "run.json").write_text("[")
    (finished_run / "config.json").write_bytes(b"\x89garbage")
    (finished_run / "metrics.csv").write_bytes(b"\x00\x00\x00")
    assert runs("show", str(finished_run)) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"{finished_run}: damaged" in shown and "run.json is damaged: not valid JSON" in shown
    assert "config.json is unreadable" in shown and "the config below is" in shown
    assert "optim.lr" in shown and "metrics.csv has 1 unreadable line" in shown

    other = finished_run.parent / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"arch": "mlp"}))
    assert runs("diff", str(finished_run), str(other)) == 0
    assert "optim.lr" in capsys.readouterr().out  # the checkpoint's config, compared
    (other / "config.json").write_text('{"arch": ')
    assert runs("diff", str(finished_run), str(other)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("error:") == 1 and f"{other / 'config.json'} is unreadable" in err
    assert "has no checkpoint.pth.tar to read it from" in err


# --- early stopping and runtime changes --------------------------------------------------


def test_early_stop_patience_stops_and_records_why(train, tmp_path):
    # Heavy label smoothing on resume makes every later evaluation worse than the best.
    assert train(*TINY, "--epochs", "2", "--run-name", "run") == 0
    run_dir = tmp_path / "outputs" / "run"
    resume = ["--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "10"]
    early_stopping = ["--callbacks", "early_stopping", "--callback.early-stopping.patience", "2"]
    assert train(*resume, "--loss.label-smoothing", "0.9", *early_stopping) == 0
    data = record(run_dir)
    assert data["epochs_done"] == 4 and data["status"] == "finished"
    assert "has not improved for 2 evaluations" in data["stop_reason"]
    assert "stopping early" in (run_dir / "training.log").read_text()


def test_early_stop_lr_stops_when_the_rate_is_low(train, tmp_path):
    argv = [
        *TINY,
        "--epochs",
        "10",
        "--scheduler",
        "step",
        "--sched.step-epochs",
        "1",
        "--sched.gamma",
        "0.1",
        "--callbacks",
        "early_stopping",
        "--callback.early-stopping.min-lr",
        "1e-6",
        "--callback.early-stopping.patience",
        "0",
        "--run-name",
        "lr",
    ]
    assert train(*argv) == 0
    data = record(tmp_path / "outputs" / "lr")
    # lr 1e-3 -> 1e-4 -> 1e-5 -> 1e-6 -> 1e-7 < 1e-6 after epoch 4.
    assert (
        data["epochs_done"] == 4
        and "fell below --callback.early-stopping.min-lr" in data["stop_reason"]
    )


def test_runtime_json_scales_the_learning_rate_from_the_next_epoch(train, tmp_path, monkeypatch):
    from toolbox.training.trainer import Trainer

    argv = [*TINY, "--epochs", "3", "--scheduler", "none", "--run-name", "rt"]
    run_dir = tmp_path / "outputs" / "rt"
    train_epoch = Trainer._train_epoch

    def edit_after_epoch_1(self, epoch_idx, display):
        if epoch_idx == 1:
            (run_dir / "runtime.json").write_text(json.dumps({"lr_scale": 0.5}))
        return train_epoch(self, epoch_idx, display)

    monkeypatch.setattr(Trainer, "_train_epoch", edit_after_epoch_1)
    assert train(*argv) == 0
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    # The edit lands during epoch 2, so epoch 3 is the first at half the rate.
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 1e-3, 5e-4])
    assert "runtime.json: lr_scale 1 -> 0.5 from epoch 3" in (run_dir / "training.log").read_text()
    monkeypatch.undo()
    # The scale survives resume: the resumed run keeps half the rate.
    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "4") == 0
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert float(rows[-1]["lr"]) == pytest.approx(5e-4)


def test_a_bad_runtime_edit_is_logged_and_ignored(train, tmp_path, monkeypatch):
    from toolbox.training.trainer import Trainer

    run_dir = tmp_path / "outputs" / "bad"
    train_epoch = Trainer._train_epoch

    def corrupt(self, epoch_idx, display):
        (run_dir / "runtime.json").write_text('{"lr_scale": -1')
        return train_epoch(self, epoch_idx, display)

    monkeypatch.setattr(Trainer, "_train_epoch", corrupt)
    assert train(*TINY, "--epochs", "2", "--run-name", "bad") == 0
    assert "runtime.json ignored" in (run_dir / "training.log").read_text()


def test_a_run_draws_its_curves_and_gives_tensorboard_the_extras(train, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = [
        *TINY,
        "--data.input-shape",
        "1",
        "8",
        "8",
        "--histogram-every",
        "1",
        "--run-name",
        "tb",
    ]
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "tb"
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(
        str(run_dir), size_guidance={"histograms": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert "samples/train" in tags["images"]
    assert any(tag.startswith("weights/") for tag in tags["histograms"])
    assert any(tag.startswith("grads/") for tag in tags["histograms"])
    assert [e.step for e in events.Histograms(tags["histograms"][0])] == [1, 2]
    assert events.PluginTagToContent("hparams")  # the run's hyper-parameters and metrics
    assert not list(run_dir.glob(".*tmp*"))


def test_a_run_draws_its_curves_in_the_background_and_waits_for_the_last(
    train, tmp_path, monkeypatch
):
    from matplotlib.figure import Figure

    def here(*args, **kwargs):
        raise AssertionError("curves.png drawn on the trainer's thread")

    monkeypatch.setattr(Figure, "savefig", here)  # the child process has its own matplotlib
    assert train(*TINY, "--epochs", "3", "--run-name", "drawn") == 0
    run_dir = tmp_path / "outputs" / "drawn"
    png = run_dir / "curves.png"
    # Complete when fit returns, and drawn from the whole table: newer than its last row.
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_mtime_ns >= (run_dir / "metrics.csv").stat().st_mtime_ns
    assert not list(run_dir.glob(".*tmp*"))
