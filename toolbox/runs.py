"""``python -m toolbox runs``: list, show, compare and trace runs from their directories."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from toolbox.config import flat
from toolbox.errors import ArgumentParser, UserError
from toolbox.run import CONFIG, METRICS, RECORD

USAGE = """\
python -m toolbox runs [DIR] [--csv] [--arch A] [--dataset D] [--status S]
python -m toolbox runs show RUN
python -m toolbox runs diff RUN_A RUN_B
python -m toolbox runs which CHECKPOINT [--dir DIR]

DIR defaults to outputs/. RUN is a run directory (or its name under outputs/)."""


def _records(directory: Path) -> list[tuple[Path, dict]]:
    """Every run under ``directory`` (sweeps nest theirs one level deeper)."""
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory of runs; give one, e.g. outputs.")
    found = []
    for path in sorted(directory.rglob(RECORD)):
        try:
            found.append((path.parent, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # a record being rewritten right now, or not ours
    return found


def _status(record: dict) -> str:
    """The recorded status, except that a "running" run whose process is gone on this
    host was killed without a chance to say so."""
    status = record.get("status", "?")
    session = (record.get("sessions") or [{}])[-1]
    if status == "running" and session.get("hostname") == socket.gethostname():
        try:
            os.kill(session["pid"], 0)
        except (ProcessLookupError, KeyError, TypeError):
            return "crashed"
        except PermissionError:
            pass  # alive, another user's
    return status


def _row(run_dir: Path, root: Path, record: dict) -> dict:
    best = record.get("best") or {}
    value = best.get("value")
    return {
        "run": str(run_dir.relative_to(root)),
        "date": record.get("created", "").replace("T", " "),
        "arch": record.get("arch"),
        "dataset": record.get("dataset"),
        "epochs": f"{record.get('epochs_done', 0)}/{record.get('epochs', '?')}",
        "best": "" if value is None else f"{best.get('metric')} {value:.4g}",
        "status": _status(record),
        "duration_s": record.get("duration_s"),
    }


def list_runs(args: list[str]) -> None:
    parser = ArgumentParser(prog="python -m toolbox runs", hint=f"usage:\n{USAGE}")
    parser.add_argument("dir", nargs="?", default="outputs", type=Path)
    parser.add_argument("--csv", action="store_true")
    for name in ("arch", "dataset", "status"):
        parser.add_argument(f"--{name}")
    options = parser.parse_args(args)
    rows = [_row(run_dir, options.dir, record) for run_dir, record in _records(options.dir)]
    rows = [
        row
        for row in rows
        if all(getattr(options, key) in (None, row[key]) for key in ("arch", "dataset", "status"))
    ]
    rows.sort(key=lambda row: row["date"], reverse=True)
    if options.csv:
        import pandas as pd

        columns = ["run", "date", "arch", "dataset", "epochs", "best", "status", "duration_s"]
        print(pd.DataFrame(rows, columns=columns).to_csv(index=False), end="")
        return
    table = Table(title=f"{len(rows)} runs in {options.dir}, newest first")
    for column in ("run", "date", "arch", "dataset", "epochs", "best", "status", "duration"):
        table.add_column(column, justify="right" if column in ("epochs", "duration") else "left")
    for row in rows:
        seconds = row["duration_s"]
        duration = "" if seconds is None else f"{seconds:.1f}s"
        cells = {**row, "date": row["date"][:16]}  # to the minute: the table is for reading
        table.add_row(*(str(cells[k] or "") for k in list(row)[:-1]), duration)
    _console().print(table)


def _console() -> Console:
    """A terminal's own width; piped output gets room enough not to wrap the run names."""
    return Console(highlight=False) if sys.stdout.isatty() else Console(highlight=False, width=200)


def _run_dir(name: str) -> Path:
    for candidate in (Path(name), Path("outputs") / name):
        if (candidate / RECORD).is_file() or (candidate / CONFIG).is_file():
            return candidate
    raise UserError(f"{name} is not a run directory (it has no {RECORD} or {CONFIG}).")


def show(args: list[str]) -> None:
    if len(args) != 1:
        raise UserError(f"runs show takes one run.\nUsage:\n{USAGE}")
    run_dir = _run_dir(args[0])
    console = _console()
    record = json.loads((run_dir / RECORD).read_text()) if (run_dir / RECORD).exists() else {}
    row = _row(run_dir, run_dir.parent, record)
    console.print(f"[bold]{run_dir}[/]: {row['status']}, {row['epochs']} epochs, {row['best']}")
    if record.get("stop_reason") or record.get("error"):
        console.print(f"  {record.get('stop_reason') or record.get('error')}")
    for session in record.get("sessions", []):
        git = session.get("git") or {}
        console.print(
            f"  {session.get('started')}  {session.get('command')}  on {session.get('hostname')}"
            f"  git {str(git.get('commit'))[:10]}{' (dirty)' if git.get('dirty') else ''}"
        )
    config = json.loads((run_dir / CONFIG).read_text())
    table = Table(title="config")
    table.add_column("option")
    table.add_column("value")
    for key, value in flat(config).items():
        table.add_row(key, json.dumps(value))
    console.print(table)
    if (run_dir / METRICS).exists():
        lines = (run_dir / METRICS).read_text().splitlines()
        console.print(
            f"last evaluation: {dict(zip(lines[0].split(','), lines[-1].split(','), strict=False))}"
        )


def diff(args: list[str]) -> None:
    if len(args) != 2:
        raise UserError(f"runs diff takes two runs.\nUsage:\n{USAGE}")
    a, b = (flat(json.loads((_run_dir(name) / CONFIG).read_text())) for name in args)
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
    from toolbox.checkpoint import load_checkpoint

    state = load_checkpoint(options.checkpoint)
    run_id = state.get("run_id")
    if run_id is None:
        raise UserError(
            f"{options.checkpoint} was written before runs had ids; its run is unknown."
        )
    for run_dir, record in _records(options.dir):
        if record.get("run_id") == run_id:
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
