"""``train.py [args] --sweep KEY=V1,V2 ...``: run the grid into one directory, one run after
another (or several at once, see sweep_workers), skip what finished before, resume what did
not, and summarise over seeds."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import re
import shlex
import statistics
import typing
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from toolbox.cli.console import print_error
from toolbox.cli.parse import parse_training_config
from toolbox.config.plain import flat, to_plain
from toolbox.config.training import SLOTS, TrainingConfig
from toolbox.errors import ArgumentParser, RunStopped, UserError
from toolbox.records.lock import RunLock, move_aside

SUMMARY = "summary.csv"
UNSWEEPABLE = ("output-dir", "run-name", "resume")  # the sweep sets these for each run
EXAMPLE = "e.g. --sweep optim.lr=0.01,0.001 --sweep seed=0,1"


def _field_types(key: str) -> list:
    """The types of the option ``key`` (``seed``, ``optim.lr``): the one TrainingConfig
    field, or the same-named fields of any registered component of that slot; [] if none."""
    slot, dot, field = key.replace("-", "_").rpartition(".")
    if not dot:
        hints = typing.get_type_hints(TrainingConfig)
        return [hints[field]] if field in hints and field not in SLOTS else []
    if slot not in SLOTS:
        return []
    registry = SLOTS[slot][1]
    classes = [typing.get_type_hints(registry.get(name)) for name in registry.names()]
    return [hints[field] for hints in classes if field in hints]


def _option(arg: str) -> str:
    """``--no-compile=x`` -> ``compile``: the option an argument sets, as a sweep key."""
    slot, dot, field = arg[2:].partition("=")[0].replace("_", "-").rpartition(".")
    return f"{slot}{dot}{field.removeprefix('no-')}"


def _arguments(combo: dict[str, str], flags: set[str]) -> list[str]:
    """A combination as arguments; bool options are flags (--compile / --no-compile), a
    value with spaces is several arguments (--model.hidden-sizes 256 128)."""
    args: list[str] = []
    for key, value in combo.items():
        if key in flags:
            slot, dot, field = key.rpartition(".")
            args.append(f"--{slot}{dot}{'' if value.lower() == 'true' else 'no-'}{field}")
        else:
            args += [f"--{key}", *value.split()]
    return args


def _parse(argv: list[str], fallback: str, named: dict[str, str]) -> TrainingConfig:
    """Parse one combination; any mistake becomes one UserError naming the option that set
    the key it is about (``named``: key -> "--sweep optim.lr=0.1,0.01"), else ``fallback``."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            return parse_training_config(argv)
    except SystemExit:  # tyro printed a box and exited: keep the line that says what is wrong
        lines = [line.strip(" │|╭╮╰╯") for line in captured.getvalue().splitlines()]
        lines = [line for line in lines if line.strip("-─ ")]
        detail = lines[1] if len(lines) > 1 else captured.getvalue().strip()
    except UserError as error:
        detail = str(error)
    keys = [key for key in named if re.search(rf"--{re.escape(key)}(?![\w.-])", detail)]
    raise UserError(f"{named[keys[0]] if len(keys) == 1 else fallback}: {detail}")


def _outcome(run_dir: Path) -> tuple[str, float | None]:
    """The run's status in its run.json ("absent": no directory, "unknown": no run.json,
    "damaged": one that does not read) and, once finished, the best value of the monitored
    metric."""
    if not run_dir.exists():
        return "absent", None
    record_path = run_dir / "run.json"
    if not record_path.exists():
        return "unknown", None
    from toolbox.records.run_record import RunRecord

    try:
        record = RunRecord.read(record_path)
    except (OSError, ValueError):
        return "damaged", None  # resumed (the trainer sets it aside) or moved aside below
    status = record.get("status", "unknown")
    return status, (record.get("best") or {}).get("value") if status == "finished" else None


def summarize(
    sweep_dir: Path, combos: dict[str, dict[str, str]], monitors: dict[str, str], failed: set[str]
) -> pd.DataFrame:
    """summary.csv: one row per combination of the non-seed keys, from the runs' run.json."""
    groups: dict[tuple, list[str]] = {}
    for name, combo in combos.items():
        key = tuple((k, v) for k, v in combo.items() if k != "seed")
        groups.setdefault(key, []).append(name)
    rows = []
    for key, names in groups.items():
        outcomes = {name: _outcome(sweep_dir / name) for name in names}
        # A finished run without a best value (every evaluation non-finite) is not counted.
        values = [
            best for status, best in outcomes.values() if status == "finished" and best is not None
        ]
        rows.append(
            {
                **dict(key),
                "metric": monitors[names[0]],
                "mean": statistics.fmean(values) if values else math.nan,
                # Sample std (ddof=1) across seeds; 0 for a single run.
                "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan,
                "runs": len(values),
                "failed": sum(n in failed or outcomes[n][0] == "failed" for n in names),
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(sweep_dir / SUMMARY, index=False)
    return table


def _read_sweeps(specs: list[str], given: set[str]) -> tuple[dict[str, list[str]], set[str]]:
    """The swept keys with their values, and which of them are flags; mistakes are errors."""
    sweeps: dict[str, list[str]] = {}
    flags: set[str] = set()
    for spec in specs:
        key, eq, listed = spec.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        values = [value.strip() for value in listed.split(",")]
        if not eq or not key or not all(values):
            raise UserError(f"--sweep {spec}: write KEY=VALUE1,VALUE2,... ({EXAMPLE}).")
        types = _field_types(key)
        if key in UNSWEEPABLE or not types:
            raise UserError(
                f"--sweep {spec}: {key} is not an option that can be swept; keys are the options "
                f"of python train.py --help without the dashes ({EXAMPLE})."
            )
        if key in sweeps or key in given:
            twice = "swept twice" if key in sweeps else "also given as an option"
            raise UserError(f"--sweep {spec}: --{key} is {twice}; keep one.")
        if bool in types:
            flags.add(key)
            if any(value.lower() not in ("true", "false") for value in values):
                raise UserError(f"--sweep {spec}: --{key} is a flag; sweep it over true,false.")
        sweeps[key] = values
    return sweeps, flags


def _check_existing(sweep_dir: Path, configs: dict[str, TrainingConfig]) -> None:
    """Runs already in the sweep directory must have been made with the same options, or
    skipping and resuming them would mix two sweeps."""
    for name, config in configs.items():
        path = sweep_dir / name / "config.json"
        if not path.exists():
            continue
        saved = _saved_config(path.parent)
        if saved is None:
            continue
        saved, new = flat(saved), flat(to_plain(config))
        ignored = ("resume", "output_dir", "run_name")
        # Only keys the saved config has: an option added to the toolbox since is no change.
        changed = [k for k in saved if k in new and k not in ignored and saved[k] != new[k]]
        if changed:
            options = ", ".join(f"--{key.replace('_', '-')}" for key in changed)
            raise UserError(
                f"{path.parent} was trained with other options ({options}); give the same "
                "options to continue this sweep, or start another with a new --run-name."
            )


def _saved_config(run_dir: Path) -> dict | None:
    """The options ``run_dir``'s run was trained with: its config.json or, when that is
    damaged, the copy in its checkpoint; None for a run the sweep trains afresh anyway."""
    try:
        saved = json.loads((run_dir / "config.json").read_bytes().decode("utf-8"))
        if isinstance(saved, dict):
            return saved
    except (OSError, ValueError):
        pass  # damaged: the slower reading below, which loads the checkpoint, says why
    from toolbox.cli.runs import run_config

    saved, note = run_config(run_dir)
    if saved is None and _outcome(run_dir)[0] == "finished":
        raise UserError(
            f"{note}: nothing tells which options it was trained with, so this sweep cannot "
            f"count it as its own; move {run_dir} aside to train it again."
        )
    return saved  # None: no checkpoint, so the run is moved aside and trained afresh


def _rebuilt_record(run_dir: Path, config) -> bool:
    """Whether ``run_dir``'s checkpoint holds the whole run ``config`` asks for (its epochs,
    or its --max-steps), in which case its damaged
    run.json is set aside and the record rebuilt from the checkpoint: resuming a complete
    run is refused, so the sweep would fail it on every call otherwise."""
    from toolbox.records.checkpoint import load_checkpoint
    from toolbox.records.run_record import RunRecord

    try:
        state = load_checkpoint(run_dir / "checkpoint.pth.tar")
    except UserError:
        return False  # resuming it says what is wrong with the checkpoint
    progress = state["progress"]
    if config.max_steps and progress["step"] < config.max_steps:
        return False
    if not config.max_steps and progress["epoch"] < config.planned_epochs:
        return False
    RunRecord(run_dir).rebuild(state)
    return True


def _show(console: Console, table: pd.DataFrame, title: str) -> None:
    view = Table(title=title)
    for column in table.columns:
        numeric = column in ("mean", "std", "runs", "failed")
        view.add_column(str(column), justify="right" if numeric else "left")
    for row in table.itertuples(index=False):
        view.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console.print(view)


def run_sweep(
    argv: list[str],
    train: Callable[[list[str], str, Sequence[str]], int],
    program: str = "train.py",
    test_program: Sequence[str] = ("test.py",),
) -> int:
    """Trains the grid of ``--sweep`` one run after another in this process, or with
    ``--sweep-workers``/``--sweep-devices`` several at once, one ``python program`` process
    each; ``program`` and ``test_program`` as for train_main."""
    console = Console(highlight=False, markup=False, soft_wrap=True)  # paths stay whole
    parser = ArgumentParser(prog=program)
    parser.add_argument("--sweep", action="append", default=[])
    parser.add_argument("--output-dir", "--output_dir", type=Path, default=Path("outputs"))
    parser.add_argument("--run-name", "--run_name")
    parser.add_argument("--resume")
    parser.add_argument("--sweep-workers", type=int)
    parser.add_argument("--sweep-devices")
    args, base = parser.parse_known_args(argv)
    if {"-h", "--help"} & set(base):
        parse_training_config(base, prog=program)  # prints the help and exits
    from toolbox.cli.sweep_workers import worker_slots

    workers = worker_slots(args.sweep_workers, args.sweep_devices, program)
    if args.resume is not None:
        raise UserError(
            "--resume and --sweep exclude each other: run the same sweep again (same "
            "--output-dir and --run-name) to resume its unfinished runs."
        )
    if args.run_name in ("", ".", "..") or "/" in (args.run_name or ""):
        raise UserError(f"--run-name is {args.run_name!r}; give a plain directory name (no '/').")

    # Everything is checked before the first run, so that a typo does not surface hours later.
    sweeps, flags = _read_sweeps(args.sweep, {_option(a) for a in base if a.startswith("--")})
    combos = [
        dict(zip(sweeps, values, strict=True)) for values in itertools.product(*sweeps.values())
    ]
    # Readable and filesystem-safe: optim.lr=0.01,seed=0 (a space or '/' becomes '_').
    grid = {
        re.sub(r"[^\w.,=+-]", "_", ",".join(f"{k}={v}" for k, v in c.items())): c for c in combos
    }
    if len(grid) < len(combos):
        raise UserError(
            f"--sweep {' --sweep '.join(args.sweep)}: a value is listed twice (or two differ only "
            "in characters that become '_' in directory names)."
        )
    sweep_dir = args.output_dir / (args.run_name or datetime.now().strftime("%y%m%d_%H%M%S"))
    argvs = {
        name: [*base, *_arguments(combo, flags), "--output-dir", str(sweep_dir), "--run-name", name]
        for name, combo in grid.items()
    }
    named = {key: f"--sweep {key}={','.join(values)}" for key, values in sweeps.items()}
    configs = {name: _parse(argv, f"the sweep's run {name}", named) for name, argv in argvs.items()}
    _check_existing(sweep_dir, configs)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"--output-dir {args.output_dir}: cannot create {sweep_dir} ({error})."
        ) from error

    import torch  # after the checks, which need no torch

    console.print(f"sweep: {len(grid)} runs into {sweep_dir}")
    runs = _runs_to_train(console, sweep_dir, argvs, configs)
    failed: set[str] = set()
    exit_code = None
    try:
        if workers is not None:
            from toolbox.cli.sweep_workers import train_in_parallel

            failed = train_in_parallel(console, runs, workers, sweep_dir, program)
        for label, name, run_argv in runs:  # none left after the parallel workers
            try:
                train(run_argv, program, test_program)
            except (UserError, torch.OutOfMemoryError) as error:  # this run's problem only
                failed.add(name)
                print_error(str(error))
                console.print(f"{label}: failed; going on with the next combination")
    except (RunStopped, KeyboardInterrupt) as stop:
        exit_code = stop.exit_code if isinstance(stop, RunStopped) else 130
        console.print(
            f"sweep stopped; run the same command "
            f"({shlex.join(['--output-dir', str(args.output_dir), '--run-name', sweep_dir.name])})"
            " to finish it: finished runs are skipped."
        )
    finally:  # also after a stop: the summary covers what finished
        monitors = {name: config.monitor for name, config in configs.items()}
        _show(console, summarize(sweep_dir, grid, monitors, failed), str(sweep_dir / SUMMARY))
    return exit_code if exit_code is not None else 1 if failed else 0


def _runs_to_train(
    console: Console,
    sweep_dir: Path,
    argvs: dict[str, list[str]],
    configs: dict[str, TrainingConfig],
) -> Iterator[tuple[str, str, list[str]]]:
    """The runs still to train, as (label, name, arguments), each decided when it is next:
    a finished run is skipped, an unfinished one resumed, a directory without a checkpoint
    moved aside. The arguments are train.py's, for this process or a worker's."""
    for index, name in enumerate(argvs, 1):
        label, run_dir = f"[{index}/{len(argvs)}] {name}", sweep_dir / name
        checkpoint = run_dir / "checkpoint.pth.tar"
        status, _ = _outcome(run_dir)
        run_argv = argvs[name]
        if status == "finished":
            console.print(f"{label}: finished before; skipped")
            continue
        if status == "damaged" and checkpoint.exists() and _rebuilt_record(run_dir, configs[name]):
            console.print(
                f"{label}: damaged run.json, but its checkpoint holds the whole run; "
                "recorded afresh from it, skipped"
            )
            continue
        if status != "absent" and checkpoint.exists():
            # Only --resume: the saved config is this combination's (checked above), and a
            # resumed run refuses changes to its fixed options.
            console.print(f"{label}: {status}; resuming from {checkpoint}")
            run_argv = ["--resume", str(checkpoint)]
        elif status != "absent":
            # Holding its lock while moving it, so that a live run is never moved away.
            lock = RunLock.acquire(run_dir, "--sweep")
            try:
                aside = move_aside(run_dir, "partial")  # kept: its log may say why it stopped
            finally:
                lock.release()
            console.print(
                f"{label}: {status}, no checkpoint; moved to {aside.name}, starting afresh"
            )
        else:
            console.print(f"{label}: starting")
        yield label, name, run_argv
