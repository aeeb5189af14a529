"""``run.json``: how a run was made and how it went."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import socket
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import toolbox
from toolbox.config.training import TrainingConfig
from toolbox.errors import UserError
from toolbox.records.atomic import write_json, write_text
from toolbox.records.layout import RECORD
from toolbox.records.lock import move_aside


def _git(directory: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state(directory: Path) -> dict[str, str | bool | None]:
    """The commit and branch the toolbox code was at, and whether it had changes (untracked
    files included), from one ``git status`` call."""
    status = _git(directory, "status", "--porcelain=v2", "--branch")
    headers = dict(
        line[2:].partition(" ")[::2] for line in (status or "").splitlines() if line[:2] == "# "
    )
    commit = headers.get("branch.oid")
    if status is None or commit in (None, "(initial)"):  # no git, no checkout, no commit
        return {"commit": None, "branch": None, "dirty": None}
    branch = headers.get("branch.head")
    return {
        "commit": commit,
        # As ``git rev-parse --abbrev-ref HEAD`` names it: "HEAD" when detached.
        "branch": "HEAD" if branch == "(detached)" else branch,
        "dirty": any(line and not line.startswith("# ") for line in status.splitlines()),
    }


def project_git_states(code_dir: Path, command: list[str] | None) -> dict[str, dict]:
    """By repository root, the git state of the user's own code, where it is not the
    toolbox's: the repository of the directory the command was run from, and that of the
    script it ran (a script_main script, kept in its project)."""
    toolbox_root = _git(code_dir, "rev-parse", "--show-toplevel")
    places = [Path.cwd()]
    if command and command[0].endswith(".py"):
        places.append(Path(command[0]).resolve().parent)
    states = {}
    for place in places:
        root = (_git(place, "rev-parse", "--show-toplevel") or "").strip()
        if root and root != (toolbox_root or "").strip() and root not in states:
            states[root] = git_state(Path(root))
    return states


def source_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every toolbox source file, for runs made outside a git checkout."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*.py"))
    }


class RunRecord:
    """``run.json``: how the run was made (command, host, code) and how it went (status,
    sessions, best metric, why it stopped), so that it can be reproduced and compared; its
    --notes and --tags; and its runs in the trackers (``trackers``: {"mlflow": {"run_id":
    ...}, "wandb": {"id": ...}}), which a resumed session continues."""

    # The JSON types each field must have where present. A record that breaks them was cut
    # short or edited by hand; reading on would fail far from the cause (a resumed session's
    # append, the listing's formatting).
    FIELDS: dict[str, tuple[type, ...]] = {
        "run_id": (str,),
        "created": (str,),
        "sessions": (list,),
        "status": (str,),
        "arch": (str,),
        "dataset": (str,),
        "epochs": (int,),
        "monitor": (str,),
        "error": (str, type(None)),
        "stop_reason": (str, type(None)),
        "epochs_done": (int,),
        "best": (dict,),
        "duration_s": (int, float),
        "ended": (str,),
        "damaged_record": (str,),
        "notes": (str,),
        "tags": (list,),
        "trackers": (dict,),
    }
    BEST_FIELDS: dict[str, tuple[type, ...]] = {
        "metric": (str,),
        "value": (int, float, type(None)),
        "epoch": (int, type(None)),
    }
    SESSION_FIELDS: dict[str, tuple[type, ...]] = {
        "started": (str,),
        "ended": (str,),
        "command": (str,),
        "cwd": (str,),
        "hostname": (str,),
        "pid": (int,),
        "git": (dict,),
        "diff": (str,),
        "source_sha256": (dict,),
    }
    _TYPE_NAMES = {
        str: "a string",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / RECORD
        self.data: dict = {}
        self.damaged_copy: Path | None = None
        """Where a damaged run.json found on resume was kept; the fresh record names it."""
        if not self.path.exists():
            return
        try:
            self.data = self.read(self.path)
        except OSError as error:
            raise UserError(
                f"cannot read {self.path} ({error}); fix its permissions, then run this again."
            ) from error
        except ValueError as damage:
            # Repaired, not refused: the run's state is in its checkpoint and run.json only
            # describes it, so refusing would stop a sound run over its notes. The damaged
            # file is kept (its earlier sessions may still be read by hand), nothing is lost.
            self.damaged_copy = move_aside(self.path, "damaged")
            logging.getLogger("toolbox").warning(
                "%s is damaged (%s); kept it as %s and started a fresh record of this run",
                self.path,
                damage,
                self.damaged_copy.name,
            )

    @classmethod
    def read(cls, path: Path) -> dict:
        """The record in ``path``, or a ValueError saying what makes it no sound run.json
        (an OSError when it cannot be read at all)."""
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except ValueError as error:  # cut short, or not text at all
            raise ValueError(f"not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"it holds {json.dumps(data)[:40]}, not a JSON object")
        problems = cls._wrong_types(data, cls.FIELDS, "")
        if isinstance(data.get("best"), dict):
            problems += cls._wrong_types(data["best"], cls.BEST_FIELDS, "best.")
        sessions = data.get("sessions")
        for number, session in enumerate(sessions if isinstance(sessions, list) else []):
            where = f"sessions[{number}]"
            if not isinstance(session, dict):
                problems.append(f"{where} is {json.dumps(session)[:40]}, not an object")
                continue
            problems += cls._wrong_types(session, cls.SESSION_FIELDS, f"{where}.")
            pid = session.get("pid")
            if isinstance(pid, int) and pid <= 0:  # os.kill(0 or -1) would signal many
                problems.append(f"{where}.pid is {pid}, not a process id")
        if problems:
            raise ValueError("; ".join(problems))
        return data

    @classmethod
    def _wrong_types(cls, data: dict, fields: dict[str, tuple[type, ...]], prefix: str) -> list:
        wrong = []
        for key, allowed in fields.items():
            if key not in data:
                continue
            value = data[key]
            # JSON's true and false are Python bools, which are ints too, yet no field's value.
            if not isinstance(value, allowed) or isinstance(value, bool):
                expected = " or ".join(dict.fromkeys(cls._TYPE_NAMES[kind] for kind in allowed))
                wrong.append(f"{prefix}{key} is {json.dumps(value)[:40]}, not {expected}")
        return wrong

    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    @staticmethod
    def _new_run_id(config: TrainingConfig) -> str:
        """A fresh id, except for a resumed run whose record was lost or damaged: it keeps
        its checkpoint's, so that ``runs which`` still finds the run from its checkpoints."""
        if config.resume is not None:
            import torch

            # mmap: only the pickled structure is read, not the weights.
            state = torch.load(config.resume, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(state.get("run_id"), str):
                return state["run_id"]
        return uuid.uuid4().hex

    def _rerun_command(self, config: TrainingConfig) -> list[str]:
        if config.resume is not None:
            return ["train.py", "--resume", str(config.resume)]
        return ["train.py", "--config", str(self.path.parent / "config.json")]

    def start(
        self,
        config: TrainingConfig,
        command: list[str] | None = None,
        git: dict | None = None,
        epochs: int | None = None,
    ) -> None:
        """A session begins: a new run, or a resume of this one. ``command`` is the script
        and arguments that made it (None, for a run started from Python: the train.py command
        that makes it again); ``git`` the code's state when the caller has it already
        (environment() reads it); ``epochs`` the epochs it trains for (by default
        --epochs, or its default)."""
        code_dir = Path(toolbox.__file__).resolve().parent
        git = git or git_state(code_dir)
        if "run_id" not in self.data:  # a new run, or a record without one (hand-written)
            self.data = {"run_id": self._new_run_id(config), "created": _now(), **self.data}
        self.data.setdefault("sessions", [])
        if self.damaged_copy is not None:
            self.data["damaged_record"] = self.damaged_copy.name
        session = {
            "started": _now(),
            "command": shlex.join(["python", *(command or self._rerun_command(config))]),
            "cwd": os.getcwd(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "git": git,
            "project_git": project_git_states(code_dir, command),
        }
        if git["commit"] is None:
            session["source_sha256"] = source_hashes(code_dir)
        elif git["dirty"]:
            # The uncommitted changes, so the exact code can be rebuilt from commit + diff.
            diff = _git(code_dir, "diff", "HEAD") or ""
            number = len(self.data["sessions"]) + 1
            name = "code.diff" if number == 1 else f"code.session{number}.diff"
            while (self.run_dir / name).exists():  # a record started afresh: keep the old
                number += 1
                name = f"code.session{number}.diff"
            write_text(self.run_dir / name, diff)
            session["diff"] = name
        self.data["sessions"].append(session)
        self.data.update(
            status="running",
            arch=config.arch,
            dataset=config.dataset,
            epochs=epochs or config.planned_epochs,
            monitor=config.monitor,
            notes=config.notes,
            tags=list(config.tags),
            error=None,
            stop_reason=None,
        )
        self.save()

    def tracker_state(self, logger: str) -> dict:
        """What the sink of ``logger`` kept here last session (its tracker run's id), or {}."""
        state = self.data.get("trackers", {}).get(logger)
        return state if isinstance(state, dict) else {}

    def set_trackers(self, states: dict[str, dict]) -> None:
        """Each tracker's run (its id, where it is), by logger name; those this session does
        not use are kept, so that a later session naming one again continues its run."""
        self.data["trackers"] = {**self.data.get("trackers", {}), **states}
        self.save()

    def progress(
        self, epochs_done: int, best_value: float | None, best_epoch: int | None, elapsed_s: float
    ) -> None:
        self.data.update(
            epochs_done=epochs_done,
            best={"metric": self.data["monitor"], "value": best_value, "epoch": best_epoch},
            duration_s=round(elapsed_s, 3),
        )
        self.save()

    def rebuild(self, state: dict) -> None:
        """Record a complete run from its last checkpoint ``state``, when its run.json was
        damaged (and set aside): the status and best value a sweep counts are in the
        checkpoint; the sessions are only in the damaged copy."""
        config, progress = state["config"], state["progress"]
        run_id = state.get("run_id")
        self.data = {
            "run_id": run_id if isinstance(run_id, str) else uuid.uuid4().hex,
            "created": _now(),
            "sessions": [],
            **{key: config[key] for key in ("arch", "dataset", "monitor")},
            "epochs": config["epochs"] or progress["epoch"],  # None: --max-steps decided
            "notes": config.get("notes", ""),
            "tags": list(config.get("tags", [])),
            "status": "finished",
            "error": None,
            "stop_reason": None,
        }
        if self.damaged_copy is not None:
            self.data["damaged_record"] = self.damaged_copy.name
        self.progress(
            progress["epoch"], progress["best_value"], progress["best_epoch"], progress["elapsed_s"]
        )

    def finish(self, status: str, *, error: str | None = None, reason: str | None = None) -> None:
        self.data["sessions"][-1]["ended"] = _now()
        self.data.update(status=status, error=error, stop_reason=reason, ended=_now())
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
