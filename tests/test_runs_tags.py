"""--notes and --tags: kept in run.json, listed and filtered by ``python -m toolbox runs``, and
free to change when a run is resumed."""

from __future__ import annotations

import csv
import json

from tests.conftest import TINY, run_main


def runs(*argv: str) -> int:
    from toolbox.cli.runs import main

    return run_main(main, ["runs", *argv])


def listed(capsys, *argv: str) -> dict[str, dict[str, str]]:
    """The rows of ``runs --csv ARGV``, by run."""
    capsys.readouterr()  # what came before
    assert runs(*argv, "--csv") == 0
    return {row["run"]: row for row in csv.DictReader(capsys.readouterr().out.splitlines())}


def test_notes_and_tags_are_recorded_listed_filtered_and_free_on_resume(train, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    argv = [*TINY, "--loggers", "none"]
    assert (
        train(*argv, "--tags", "baseline", "lr-sweep", "--notes", "lr 1e-3", "--run-name", "a") == 0
    )
    assert train(*argv, "--tags", "lr-sweep", "--run-name", "b") == 0
    assert train(*argv, "--run-name", "c") == 0
    record = json.loads((outputs / "a" / "run.json").read_text())
    assert record["tags"] == ["baseline", "lr-sweep"] and record["notes"] == "lr 1e-3"

    rows = listed(capsys, str(outputs))
    assert {run: row["tags"] for run, row in rows.items()} == {
        "a": "baseline, lr-sweep",
        "b": "lr-sweep",
        "c": "",
    }
    assert set(listed(capsys, str(outputs), "--tag", "lr-sweep")) == {"a", "b"}
    assert set(listed(capsys, str(outputs), "--tag", "lr-sweep", "--tag", "baseline")) == {"a"}
    assert listed(capsys, str(outputs), "--tag", "nope") == {}
    assert runs("show", str(outputs / "a")) == 0
    shown = capsys.readouterr().out
    assert "tags: baseline, lr-sweep" in shown and "notes: lr 1e-3" in shown

    # A resume keeps them unless it gives new ones: they change no weight.
    checkpoint = str(outputs / "a" / "checkpoint.pth.tar")
    assert train("--resume", checkpoint, "--epochs", "3") == 0
    assert json.loads((outputs / "a" / "run.json").read_text())["tags"] == ["baseline", "lr-sweep"]
    assert train("--resume", checkpoint, "--epochs", "4", "--tags", "final", "--notes", "") == 0
    record = json.loads((outputs / "a" / "run.json").read_text())
    assert record["tags"] == ["final"] and record["notes"] == ""
    assert set(listed(capsys, str(outputs), "--tag", "final")) == {"a"}
