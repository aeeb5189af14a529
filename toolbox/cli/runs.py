"""``python -m toolbox runs``: list, show, compare and trace runs from their directories.

torch-free: reading a checkpoint (``which``, or a config that only the checkpoint still
holds) loads torch then; rich and the config layer load when a command needs them, so
``--help`` costs little more than the interpreter's start."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from toolbox.errors import ArgumentParser, UserError
from toolbox.records.layout import CONFIG, LAST, METRICS, RECORD

if TYPE_CHECKING:
    from rich.console import Console

USAGE = """\
python -m toolbox runs [DIR] [--csv] [--arch A] [--dataset D] [--status S] [--tag T]...
python -m toolbox runs show RUN
python -m toolbox runs diff RUN_A RUN_B
python -m toolbox runs which CHECKPOINT [--dir DIR]

DIR defaults to outputs/. RUN is a run directory (or its name under outputs/)."""


LISTED_COLUMNS = ("run", "date", "arch", "dataset", "epochs", "best", "status", "tags")
"""The listing's columns, before its duration (seconds in the CSV, formatted in the table)."""


def _records(directory: Path) -> list[tuple[Path, dict | None, str | None]]:
    """Every run under ``directory`` (sweeps nest theirs one level deeper) with its record,
    or with None and what is wrong when its run.json is damaged (it is replaced whole, so a
    reader never sees one half-written)."""
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory of runs; give one, e.g. outputs.")
    return [(path.parent, *_record(path.parent)) for path in sorted(directory.rglob(RECORD))]


def _record(run_dir: Path) -> tuple[dict | None, str | None]:
    """The run's record ({} when it has none), or None and what makes it unreadable."""
    if not (run_dir / RECORD).exists():
        return {}, None
    from toolbox.records.run_record import RunRecord

    try:
        return RunRecord.read(run_dir / RECORD), None
    except (OSError, ValueError) as error:
        return None, str(error)


def _status(record: dict) -> str:
    """The recorded status, except that a "running" run whose process is gone on this
    host was killed without a chance to say so."""
    status = record.get("status", "?")
    session = (record.get("sessions") or [{}])[-1]
    if status == "running" and session.get("hostname") == socket.gethostname():
        try:
            os.kill(session["pid"], 0)
        except (ProcessLookupError, KeyError, OverflowError):
            return "crashed"
        except PermissionError:
            pass  # alive, another user's
    return status


def _tags(record: dict) -> list[str]:
    """The run's --tags (a hand-edited record may hold anything in its list)."""
    return [str(tag) for tag in record.get("tags") or []]


def _row(run_dir: Path, root: Path, record: dict | None) -> dict:
    """The run's row in the table; a damaged record (None) gives a row that says so."""
    sound = record is not None
    record = record or {}
    best = record.get("best") or {}
    value = best.get("value")
    return {
        "run": str(run_dir.relative_to(root)),
        "date": record.get("created", "").replace("T", " "),
        "arch": record.get("arch"),
        "dataset": record.get("dataset"),
        "epochs": f"{record.get('epochs_done', 0)}/{record.get('epochs', '?')}" if sound else "",
        "best": "" if value is None else f"{best.get('metric')} {value:.4g}",
        "status": _status(record) if sound else "damaged",
        "tags": ", ".join(_tags(record)),
        "duration_s": record.get("duration_s"),
    }


def list_runs(args: list[str]) -> None:
    parser = ArgumentParser(prog="python -m toolbox runs", hint=f"usage:\n{USAGE}")
    parser.add_argument("dir", nargs="?", default="outputs", type=Path)
    parser.add_argument("--csv", action="store_true")
    for name in ("arch", "dataset", "status"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--tag", action="append", default=[])  # runs with every tag given
    options = parser.parse_args(args)
    found = _records(options.dir)
    rows = [
        _row(run_dir, options.dir, record)
        for run_dir, record, _ in found
        if set(options.tag) <= set(_tags(record or {}))
    ]
    rows = [
        row
        for row in rows
        if all(getattr(options, key) in (None, row[key]) for key in ("arch", "dataset", "status"))
    ]
    rows.sort(key=lambda row: row["date"], reverse=True)
    if options.csv:
        import pandas as pd

        columns = [*LISTED_COLUMNS, "duration_s"]
        print(pd.DataFrame(rows, columns=columns).to_csv(index=False), end="")
        _report_damage(found)
        return
    from rich.table import Table

    table = Table(title=f"{len(rows)} runs in {options.dir}, newest first")
    for column in (*LISTED_COLUMNS, "duration"):
        table.add_column(column, justify="right" if column in ("epochs", "duration") else "left")
    for row in rows:
        seconds = row["duration_s"]
        duration = "" if seconds is None else f"{seconds:.1f}s"
        cells = {**row, "date": row["date"][:16]}  # to the minute: the table is for reading
        table.add_row(*(str(cells[k] or "") for k in list(row)[:-1]), duration)
    _console().print(table)
    _report_damage(found)


def _report_damage(found: list[tuple[Path, dict | None, str | None]]) -> None:
    """Why each "damaged" row is so, on stderr: the table (or CSV) on stdout stays clean."""
    for run_dir, _, damage in found:
        if damage is not None:
            print(f"{run_dir / RECORD} is damaged: {damage}", file=sys.stderr)


def _console() -> Console:
    """A terminal's own width; piped output gets room enough not to wrap the run names."""
    from rich.console import Console

    return Console(highlight=False) if sys.stdout.isatty() else Console(highlight=False, width=200)


def _run_dir(name: str) -> Path:
    for candidate in (Path(name), Path("outputs") / name):
        if (candidate / RECORD).is_file() or (candidate / CONFIG).is_file():
            return candidate
    raise UserError(f"{name} is not a run directory (it has no {RECORD} or {CONFIG}).")


def show(args: list[str]) -> None:
    if len(args) != 1:
        raise UserError(f"runs show takes one run.\nUsage:\n{USAGE}")
    from rich.table import Table

    from toolbox.config.plain import flat
    from toolbox.records.metrics_table import MetricsTable

    run_dir = _run_dir(args[0])
    console = _console()
    record, damage = _record(run_dir)
    row = _row(run_dir, run_dir.parent, record)
    facts = [row["status"], f"{row['epochs']} epochs" if row["epochs"] else "", row["best"]]
    console.print(f"[bold]{run_dir}[/]: {', '.join(fact for fact in facts if fact)}")
    if damage is not None:
        console.print(f"  {run_dir / RECORD} is damaged: {damage}", markup=False)
    record = record or {}
    if record.get("stop_reason") or record.get("error"):
        console.print(f"  {record.get('stop_reason') or record.get('error')}")
    if _tags(record):
        console.print(f"  tags: {', '.join(_tags(record))}", markup=False)
    if record.get("notes"):
        console.print(f"  notes: {record['notes']}", markup=False)
    for session in record.get("sessions", []):
        git = session.get("git") or {}
        console.print(
            f"  {session.get('started')}  {session.get('command')}  on {session.get('hostname')}"
            f"  git {str(git.get('commit'))[:10]}{' (dirty)' if git.get('dirty') else ''}"
        )
    config, note = run_config(run_dir)
    if note is not None:
        console.print(note, markup=False)
    if config is not None:
        table = Table(title="config")
        table.add_column("option")
        table.add_column("value")
        for key, value in flat(config).items():
            table.add_row(key, json.dumps(value))
        console.print(table)
    if (run_dir / METRICS).exists():
        header, rows, torn, damaged = MetricsTable.read(run_dir / METRICS)
        if rows:
            console.print(f"last evaluation: {dict(zip(header, rows[-1], strict=True))}")
        unreadable = damaged + ["its last line, cut short"] * bool(torn)
        if unreadable:
            lines = f"{len(unreadable)} unreadable line{'s' * (len(unreadable) > 1)}"
            console.print(
                f"{run_dir / METRICS} has {lines} ({unreadable[0]}); resuming the run repairs it",
                markup=False,
            )


def run_config(run_dir: Path) -> tuple[dict | None, str | None]:
    """The run's config and, when config.json is damaged or missing, a note saying so and
    where the config came from instead: the checkpoint holds it too. None if neither has."""
    path = run_dir / CONFIG
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
        if isinstance(config, dict):
            return config, None
        problem = f"it holds {json.dumps(config)[:40]}, not a JSON object"
    except (OSError, ValueError) as error:
        problem = str(error)
    if not (run_dir / LAST).is_file():
        return None, f"{path} is unreadable ({problem}), and the run has no {LAST} to read it from"
    from toolbox.records.checkpoint import load_checkpoint

    try:
        config = load_checkpoint(run_dir / LAST)["config"]
    except UserError as error:
        return None, f"{path} is unreadable ({problem}), and so is its checkpoint: {error}"
    return config, f"{path} is unreadable ({problem}); the config below is {run_dir / LAST}'s"


def diff(args: list[str]) -> None:
    if len(args) != 2:
        raise UserError(f"runs diff takes two runs.\nUsage:\n{USAGE}")
    from rich.table import Table

    from toolbox.config.plain import flat

    configs = []
    for name in args:
        config, note = run_config(_run_dir(name))
        if config is None:
            raise UserError(f"runs diff: {note}; restore it, or compare other runs.")
        configs.append(flat(config))
    a, b = configs
    changed = sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))
    console = _console()
    if not changed:
        console.print(f"{args[0]} and {args[1]} have the same config.")
        return
    table = Table(title=f"{len(changed)} config fields differ")
    for column in ("option", args[0], args[1]):
        table.add_column(column)
    for key in changed:
        table.add_row(key, json.dumps(a.get(key)), json.dumps(b.get(key)))
    console.print(table)


def which(args: list[str]) -> None:
    parser = ArgumentParser(prog="python -m toolbox runs which", hint=f"usage:\n{USAGE}")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dir", type=Path, default=Path("outputs"))
    options = parser.parse_args(args)
    from toolbox.records.checkpoint import load_checkpoint

    state = load_checkpoint(options.checkpoint)
    run_id = state.get("run_id")
    if run_id is None:
        raise UserError(
            f"{options.checkpoint} was written before runs had ids; its run is unknown."
        )
    for run_dir, record, _ in _records(options.dir):
        if record and record.get("run_id") == run_id:
            progress = state["progress"]
            print(
                f"{options.checkpoint} was written by run {run_dir} (epoch {progress['epoch']}, "
                f"step {progress['step']}; {record.get('arch')} on {record.get('dataset')})"
            )
            return
    raise UserError(
        f"no run under {options.dir} has the id {run_id} of {options.checkpoint}; "
        "search another directory with --dir."
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "runs" or argv[1:2] in (["-h"], ["--help"]):
        print(USAGE)
        return 0 if argv[1:2] in (["-h"], ["--help"]) else 2
    commands = {"show": show, "diff": diff, "which": which}
    if len(argv) > 1 and argv[1] in commands:
        commands[argv[1]](argv[2:])
    else:
        list_runs(argv[1:])
    return 0
