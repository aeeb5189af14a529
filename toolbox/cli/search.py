"""``train.py [options] --search optuna --search-trials N --search-space KEY=KIND:... ...``:
hyper-parameter search with Optuna. Each trial is an ordinary run directory,
``<output-dir>/<run-name>/trial_<number>/``, trained in this process one after another;
several processes started with the same options share the study (its storage, by default
``<output-dir>/<run-name>/study.db``) and finish exactly N trials between them.

Torch-free at import, like the rest of the command line; Optuna is an optional extra,
imported once ``--search optuna`` is asked for."""

from __future__ import annotations

import json
import math
import os
import shlex
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console

from toolbox.cli.parse import parse_training_config
from toolbox.cli.search_space import EXAMPLE, Dimension, read_space
from toolbox.cli.sweep import _arguments, _option, _parse, _show
from toolbox.config.training import TrainingConfig
from toolbox.errors import ArgumentParser, UserError
from toolbox.training.events import Listener
from toolbox.training.signals import active_watch

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "halving")
INSTALL = "uv sync --extra search"
SUMMARY = "summary.csv"
STUDY_FILE = "study.db"
ASK_LOCK = "search.lock"
HEARTBEAT_S = 60
"""Each trial's liveness signal; a trial silent for twice that is failed (and retried)."""
WAIT_S = 5
"""How often a worker with no trial left to start looks whether the running ones ended."""


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError(
            f"--search optuna needs Optuna, an optional extra: install it with `{INSTALL}`."
        ) from None
    return optuna


def _sampler(optuna, name: str, space: list[Dimension]):
    if name == "grid":
        return optuna.samplers.GridSampler({d.key: d.grid() for d in space})
    return optuna.samplers.RandomSampler() if name == "random" else optuna.samplers.TPESampler()


def _pruner(optuna, name: str):
    # A trial is judged from its first evaluation, against the trials finished before it.
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _open_storage(optuna, url: str, heartbeat_s: int):
    """The study's storage; a worker whose trial falls silent for 2 heartbeats is taken for
    dead, and its trial failed and retried once by the next worker to look."""
    # SQLite allows one writer at a time: wait for the other workers rather than fail.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna 4.9+
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                on_stale = {"heartbeat_stale_trial_callback": retry}
            else:
                on_stale = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(1)}
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                **on_stale,
            )
    except Exception as error:  # SQLAlchemy's: a bad URL, no driver, no such file or host
        raise UserError(
            f"--search-storage {url}: cannot open it ({str(error).splitlines()[0]}); give an "
            "Optuna RDB URL, e.g. sqlite:///study.db or postgresql://user@host/db."
        ) from None


class _AskLock:
    """Held from counting the study's trials until the next trial exists (RUNNING), so that
    the workers sharing the study never start more than N trials between them. A file lock
    in the search directory: workers on several machines need it on a shared file system."""

    def __init__(self, path: Path) -> None:
        self.path, self._descriptor = path, None

    def acquire(self) -> None:
        import fcntl

        self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self._descriptor, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing releases the lock
            self._descriptor = None


class PruneAtEvaluation(Listener):
    """Reports each evaluation's monitored metric to the trial; when the pruner finds the
    trial hopeless, asks the run to stop the way early stopping does (the stop controller's
    reason, honoured after that epoch's checkpoint), so the run ends finished, not failed."""

    def __init__(self, trial, stopper, monitor: str, pruner: str) -> None:
        self.trial, self.stopper, self.monitor, self.pruner = trial, stopper, monitor, pruner
        self.reason: str | None = None

    def on_evaluation_end(self, row: dict[str, float | int], improved: bool) -> None:
        value = row[self.monitor]
        if not math.isfinite(value):
            return  # Optuna compares numbers; a non-finite run fails on its own
        self.trial.report(value, step=row["epoch"])
        if self.trial.should_prune():
            self.reason = (
                f"pruned by Optuna's {self.pruner} pruner: {self.monitor} {value:.4g} after "
                f"epoch {row['epoch']} is worse than the other trials' there"
            )
            self.stopper.request_stop(self.reason)


def _train_trial(config: TrainingConfig, command: list[str], test_program, listen):
    """toolbox.cli.main.run_training with a listener subscribed before fit()."""
    from toolbox.training import distributed
    from toolbox.training.trainer import Trainer

    context = distributed.start(config.device, config.dist_timeout)
    try:
        trainer = Trainer(config, command=command, test_program=test_program, distributed=context)
        listener = listen(trainer.stopper)
        trainer.events.subscribe(listener)
        trainer.fit()
    finally:
        distributed.stop(context, together=False)  # one process: nobody to wait for
    return trainer, listener


def _read_options(argv: list[str], program: str):
    parser = ArgumentParser(prog=program)
    parser.add_argument("--search")
    parser.add_argument("--search-trials", type=int)
    parser.add_argument("--search-space", nargs="+", action="extend", default=[])
    parser.add_argument("--search-sampler", default="tpe")
    parser.add_argument("--search-pruner", default="none")
    parser.add_argument("--search-storage")
    parser.add_argument("--search-heartbeat", type=int, default=HEARTBEAT_S)
    parser.add_argument("--search-summary", action="store_true")
    parser.add_argument("--sweep", action="append", default=[])
    parser.add_argument("--output-dir", "--output_dir", type=Path, default=Path("outputs"))
    parser.add_argument("--run-name", "--run_name")
    parser.add_argument("--resume")
    return parser.parse_known_args(argv)


def _check_options(args) -> None:
    if args.search != "optuna":
        raise UserError(f"--search {args.search}: the one search is optuna (--search optuna).")
    if args.sweep or args.resume is not None:
        other = "--sweep" if args.sweep else "--resume"
        raise UserError(
            f"--search and {other} exclude each other: a search picks its trials' options "
            "itself, and the same command again carries on with its study."
        )
    if not args.run_name or args.run_name in (".", "..") or "/" in args.run_name:
        raise UserError(
            f"--search needs --run-name, a plain directory name (got {args.run_name!r}): it "
            "names the study that the workers and a restart share."
        )
    if not args.search_summary and (args.search_trials is None or args.search_trials < 1):
        raise UserError(f"--search-trials {args.search_trials}: give the number of trials, 1+.")
    for option, value, choices in (
        ("--search-sampler", args.search_sampler, SAMPLERS),
        ("--search-pruner", args.search_pruner, PRUNERS),
    ):
        if value not in choices:
            raise UserError(f"{option} {value}: choose one of {', '.join(choices)}.")
    if args.search_heartbeat < 1:
        raise UserError(f"--search-heartbeat {args.search_heartbeat}: give seconds, 1 or more.")


@dataclass(frozen=True)
class _Plan:
    """What every trial of this search is made from."""

    args: object  # the --search options, parsed
    space: list[Dimension]
    flags: set[str]
    base: list[str]  # train.py's own options, the same for every trial
    search_dir: Path
    url: str
    program: str
    test_program: tuple[str, ...]

    def argv(self, values: dict[str, str], name: str) -> list[str]:
        run = ["--output-dir", str(self.search_dir), "--run-name", name]
        return [*self.base, *_arguments(values, self.flags), *run]

    def parse(self, values: dict[str, str], name: str, fallback: str) -> TrainingConfig:
        named = {d.key: f"--search-space {d.spec}" for d in self.space}
        return _parse(self.argv(values, name), fallback, named)


def run_search(
    argv: list[str], program: str = "train.py", test_program: tuple[str, ...] = ("test.py",)
) -> int:
    """Runs --search's trials in this process until the study holds --search-trials
    complete or pruned ones, then writes summary.csv and prints the best trial."""
    console = Console(highlight=False, markup=False, soft_wrap=True)
    args, base = _read_options(argv, program)
    if {"-h", "--help"} & set(base):
        parse_training_config(base, prog=program)  # prints the help and exits
    _check_options(args)
    optuna = _import_optuna()
    space, flags = read_space(args.search_space, {_option(a) for a in base if a.startswith("--")})
    if not space and not args.search_summary:
        raise UserError(f"--search optuna needs the options to search: {EXAMPLE}.")
    search_dir = args.output_dir / args.run_name
    url = args.search_storage or f"sqlite:///{(search_dir / STUDY_FILE).resolve()}"
    plan = _Plan(args, space, flags, base, search_dir, url, program, test_program)
    # Every end of every range is parsed now: a value train.py refuses stops the search here.
    first = {dimension.key: dimension.extremes()[0] for dimension in space}
    corners = [{**first, d.key: value} for d in space for value in d.extremes()] or [{}]
    config = [plan.parse(corner, "trial", "the search's trials") for corner in corners][0]
    sampler = _sampler(optuna, args.search_sampler, space)
    pruner = _pruner(optuna, args.search_pruner)
    if args.search_storage is None:
        if args.search_summary and not (search_dir / STUDY_FILE).exists():
            raise UserError(f"--search-summary: there is no study in {search_dir} yet.")
        search_dir.mkdir(parents=True, exist_ok=True)
    # Workers starting together would create the storage's tables at once, which SQLite
    # refuses to the second: the default storage is opened under the search's lock.
    opening = _AskLock(search_dir / ASK_LOCK)
    if search_dir.is_dir():
        opening.acquire()
    try:
        storage = _open_storage(optuna, url, args.search_heartbeat)
        study = optuna.create_study(
            storage=storage,
            study_name=args.run_name,
            direction="minimize" if config.monitor_mode == "min" else "maximize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    finally:
        opening.release()
    # What the workers must agree on: the storage, heartbeat and --search-summary may differ.
    options = json.dumps(
        [base, args.search_space, args.search_trials, args.search_sampler, args.search_pruner]
    )
    if args.search_summary:
        _report(console, optuna, study, plan)
        return 0
    saved = study.user_attrs.get("options")
    if saved is None:
        study.set_user_attr("options", options)
        study.set_user_attr("monitor", config.monitor)
    elif saved != options:
        raise UserError(
            f"the study {args.run_name} in {url} was started with other options "
            f"({' '.join(json.loads(saved)[0])} ...); give the same options to join it, or "
            "start another search with a new --run-name."
        )
    search_dir.mkdir(parents=True, exist_ok=True)
    from toolbox.records import curves

    curves.start_drawer()  # as for one run: matplotlib imports on the other core
    failures = _work(console, optuna, study, plan)
    _report(console, optuna, study, plan)
    return 1 if failures >= args.search_trials else 0


def _work(console: Console, optuna, study, plan: _Plan) -> int:
    """Trials until the study holds --search-trials complete or pruned ones; returns how
    many of this worker's trials failed (it gives up after --search-trials of them)."""
    import torch  # after the checks, which need no torch

    from toolbox.cli.console import print_error

    state = optuna.trial.TrialState
    args, search_dir = plan.args, plan.search_dir
    wanted, lock = args.search_trials, _AskLock(search_dir / ASK_LOCK)
    failures, waiting, watch = 0, False, active_watch()

    def objective(trial) -> float:
        lock.release()  # the trial is RUNNING in the study now: the others count it
        name = f"trial_{trial.number}"
        values = {dimension.key: dimension.suggest(trial) for dimension in plan.space}
        config = plan.parse(values, name, f"the search's {name}")
        trial.set_user_attr("run_dir", str(search_dir / name))
        console.print(f"[trial {trial.number}] {' '.join(f'--{k} {v}' for k, v in values.items())}")
        trainer, pruning = _train_trial(
            config,
            [plan.program, *plan.argv(values, name)],
            plan.test_program,
            lambda stopper: PruneAtEvaluation(trial, stopper, config.monitor, args.search_pruner),
        )
        if pruning.reason:
            raise optuna.TrialPruned(pruning.reason)
        best = trainer.state.progress.best_value
        return math.nan if best is None else best  # NaN: Optuna records the trial as failed

    def count_failure(study, trial) -> None:
        nonlocal failures
        failures += trial.state == state.FAIL

    while failures < wanted:
        if watch is not None:
            watch.raise_if_received(
                "between two trials; the same command carries on with the study"
            )
        lock.acquire()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            states = [trial.state for trial in study.get_trials(deepcopy=False)]
            done = states.count(state.COMPLETE) + states.count(state.PRUNED)
            if done >= wanted:
                return failures
            if done + states.count(state.RUNNING) >= wanted:
                # The last trials are running in other workers: wait, to take over the trial
                # of one that dies (its heartbeat stops).
                if not waiting:
                    console.print("waiting for the trials that other workers are running")
                waiting = True
                lock.release()
                time.sleep(min(args.search_heartbeat, WAIT_S))
                continue
            study.optimize(
                objective,
                n_trials=1,
                catch=(UserError, torch.OutOfMemoryError),  # that trial's problem only
                callbacks=[count_failure],
            )
        finally:
            lock.release()
    print_error(f"{failures} trials failed in this worker; see their training.log. Giving up.")
    return failures


def write_summary(study, search_dir: Path) -> pd.DataFrame:
    """summary.csv: one row per trial with its parameters, value, state and run directory."""
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(key for trial in trials for key in trial.params))
    rows = [
        {
            "number": trial.number,
            **{key: trial.params.get(key) for key in keys},
            "metric": study.user_attrs.get("monitor", ""),
            "value": math.nan if trial.value is None else trial.value,
            "state": trial.state.name,
            "run_dir": trial.user_attrs.get("run_dir", ""),
        }
        for trial in trials
    ]
    columns = ["number", *keys, "metric", "value", "state", "run_dir"]
    table = pd.DataFrame(rows, columns=columns)
    table.to_csv(search_dir / SUMMARY, index=False)
    return table


def _report(console: Console, optuna, study, plan: _Plan) -> None:
    """summary.csv, the best trial and the command that trains its config again."""
    args = plan.args
    _show(console, write_summary(study, plan.search_dir), str(plan.search_dir / SUMMARY))
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        best = study.best_trial
        config = Path(best.user_attrs["run_dir"]) / "config.json"
        rerun = ["python", plan.program, "--config", str(config)]
        rerun += ["--output-dir", str(args.output_dir), "--run-name", f"{args.run_name}_best"]
        params = " ".join(f"--{key} {value}" for key, value in best.params.items())
        monitor = study.user_attrs.get("monitor")
        console.print(f"best: trial {best.number}, {monitor} {best.value:.4g} with {params}")
        console.print(f"train it again: {shlex.join(rerun)}")
    else:
        console.print("no trial has completed yet")
    console.print(f"browse the study: optuna-dashboard {plan.url}")
