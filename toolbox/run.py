"""A run's directory and its records: config, environment, log, metrics table, TensorBoard."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import torch

import toolbox
from toolbox.checkpoint import LAST
from toolbox.config import TrainingConfig, to_plain
from toolbox.errors import UserError
from toolbox.run_lock import RunLock, move_aside

CONFIG = "config.json"
ENV = "env.json"
LOG = "training.log"
METRICS = "metrics.csv"
RECORD = "run.json"
RUNTIME = "runtime.json"


def new_run_dir(config: TrainingConfig) -> tuple[Path, RunLock]:
    """Create ``<output-dir>/<run-name or YYMMDD_HHMMSS>`` and take its lock before anything
    is written into it; a timestamp already taken gets a numeric suffix. A run name already
    taken is refused while its run is alive or has a checkpoint to resume; an attempt that
    died before its first checkpoint left nothing to resume, so its directory is moved aside
    (its log kept) and the same command starts the run again."""
    output_dir = Path(config.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        if config.run_name is not None:
            return _claim_named_run_dir(output_dir / config.run_name)
        stamp = datetime.now().strftime("%y%m%d_%H%M%S")
        for attempt in range(1000):
            run_dir = output_dir / (stamp if attempt == 0 else f"{stamp}_{attempt}")
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            return run_dir, RunLock.acquire(run_dir, f"--output-dir {output_dir}")
        raise UserError(f"could not find a free run directory name under {output_dir}.")
    except UserError:
        raise
    except OSError as error:
        raise UserError(
            f"--output-dir {output_dir}: cannot create the run directory there ({error}); "
            "choose a writable directory with --output-dir."
        ) from error


def _claim_named_run_dir(run_dir: Path) -> tuple[Path, RunLock]:
    purpose = f"--run-name {run_dir.name!r}"
    try:
        run_dir.mkdir()
        return run_dir, RunLock.acquire(run_dir, purpose)
    except FileExistsError:
        pass
    # Holding its lock while looking, so that no other process can start in it meanwhile.
    old_lock = RunLock.acquire(run_dir, purpose)
    try:
        if (run_dir / LAST).exists():
            resume = shlex.join(["--resume", str(run_dir / LAST)])
            raise UserError(
                f"{purpose}: {run_dir} already exists and holds a run with a checkpoint; "
                f"continue it with {resume}, or choose another --run-name."
            )
        aside = move_aside(run_dir, "no-checkpoint")
    finally:
        old_lock.release()
    print(
        f"{purpose}: {run_dir} had no checkpoint (an attempt that stopped before its first "
        f"one); moved it to {aside.name}, starting the run again.",
        file=sys.stderr,
    )
    run_dir.mkdir()
    return run_dir, RunLock.acquire(run_dir, purpose)


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader, or the next session after a crash
    or power cut, finds the old file or the new one whole, never a mix."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            # Without it a power cut soon after the rename can leave the name on an empty file.
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk leaves no half-written temporary
        raise


def _git(directory: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state(directory: Path) -> dict[str, str | bool | None]:
    """The commit and branch the toolbox code was at, and whether it had changes."""
    commit = _git(directory, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None}
    branch = _git(directory, "rev-parse", "--abbrev-ref", "HEAD")
    status = _git(directory, "status", "--porcelain")
    return {
        "commit": commit.strip(),
        "branch": branch.strip() if branch else None,
        "dirty": bool(status and status.strip()),
    }


def source_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every toolbox source file, for runs made outside a git checkout."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*.py"))
    }


class RunRecord:
    """``run.json``: how the run was made (command, host, code) and how it went (status,
    sessions, best metric, why it stopped), so that it can be reproduced and compared."""

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
            # mmap: only the pickled structure is read, not the weights.
            state = torch.load(config.resume, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(state.get("run_id"), str):
                return state["run_id"]
        return uuid.uuid4().hex

    def start(
        self, config: TrainingConfig, command: list[str] | None = None, git: dict | None = None
    ) -> None:
        """A session begins: a new run, or a resume of this one. ``command`` is the script
        and arguments that made it (default: this process's own); ``git`` the code's state
        when the caller has it already (environment() reads it)."""
        code_dir = Path(toolbox.__file__).resolve().parent
        git = git or git_state(code_dir)
        if "run_id" not in self.data:  # a new run, or a record without one (hand-written)
            self.data = {"run_id": self._new_run_id(config), "created": _now(), **self.data}
        self.data.setdefault("sessions", [])
        if self.damaged_copy is not None:
            self.data["damaged_record"] = self.damaged_copy.name
        session = {
            "started": _now(),
            "command": shlex.join(["python", *(command or sys.argv)]),
            "cwd": os.getcwd(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "git": git,
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
            (self.run_dir / name).write_text(diff)
            session["diff"] = name
        self.data["sessions"].append(session)
        self.data.update(
            status="running",
            arch=config.arch,
            dataset=config.dataset,
            epochs=config.epochs,
            monitor=config.monitor,
            error=None,
            stop_reason=None,
        )
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
            **{key: config[key] for key in ("arch", "dataset", "epochs", "monitor")},
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


def environment(device: torch.device) -> dict:
    import torchvision

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "toolbox": toolbox.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": device_name,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git": git_state(Path(toolbox.__file__).resolve().parent),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


class MetricsTable:
    """``metrics.csv``: one row per evaluation, appended (a resumed run adds to it)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns

    @staticmethod
    def read(path: Path) -> tuple[list[str] | None, list[list[str]], bytes, list[str]]:
        """What ``path`` holds: its header (None without a usable one), the rows that read
        whole, its last line if an append killed midway left it without its newline (else
        b""), and what is wrong with each other line that does not read."""
        lines = path.read_bytes().split(b"\n")
        torn = lines.pop()  # b"" after the newline that ends every complete line
        header: list[str] | None = None
        rows: list[list[str]] = []
        damaged: list[str] = []
        for number, line in enumerate(lines, 1):
            try:
                text = line.decode("utf-8", "replace").removesuffix("\r")
                if "\0" in text or "\ufffd" in text:
                    raise ValueError("binary bytes, not text")
                fields = next(csv.reader([text]), [])
                if header is None:
                    if number > 1:
                        raise ValueError("no header to read it by")
                    if "step" not in fields or "" in fields or len(set(fields)) < len(fields):
                        raise ValueError(f"{text[:60]!r} is no header of column names")
                    header = fields
                    continue
                if len(fields) != len(header):
                    raise ValueError(f"{len(fields)} values where the header has {len(header)}")
                int(fields[header.index("step")])
                for value in fields:
                    if value:
                        float(value)  # every column is a number: anything else is garbage
            except (ValueError, csv.Error) as error:
                damaged.append(f"line {number}: {str(error)[:80]}")
                continue
            rows.append(fields)
        return header, rows, torn, damaged

    def drop_rows_after(self, step: int) -> None:
        """Remove rows logged after ``step`` (a resumed run is about to log them again) and
        the lines an interrupted or damaged write left unreadable, saying so in the log: new
        rows must never be glued onto half a row."""
        try:
            self._repair(step)
        except OSError as error:
            raise UserError(
                f"cannot repair {self.path} ({error}); free space or fix its permissions, then "
                "resume again."
            ) from error

    def _repair(self, step: int) -> None:
        if not self.path.exists():
            return
        header, rows, torn, damaged = self.read(self.path)
        kept = [row for row in rows if header and int(row[header.index("step")]) <= step]
        if len(kept) == len(rows) and not torn and not damaged:
            return
        logger = logging.getLogger("toolbox")
        if torn:
            # A killed append: that evaluation came after the checkpoint (which is written
            # after it), so the resumed run logs it again and dropping it loses nothing.
            logger.warning(
                "%s: dropped its last line %r, cut short by an interrupted write",
                self.path,
                torn[:60].decode("utf-8", "replace"),
            )
        if damaged:
            # Repaired, not refused: the table is a log of evaluations and the run's state is
            # in its checkpoint, so refusing would stop a sound run over a log the user could
            # only set aside by hand. Doing that here and keeping the readable rows loses
            # nothing: the original stays beside it.
            aside = move_aside(self.path, "damaged")
            unlisted = len(damaged) - 3
            shown = "; ".join(damaged[:3]) + (f"; {unlisted} more such" if unlisted > 0 else "")
            logger.warning(
                "%s was damaged (%s); kept it as %s and rewrote it with its %d readable rows",
                self.path,
                shown,
                aside.name,
                len(kept),
            )
        table = io.StringIO()
        if header is not None:  # without one, append starts the table afresh
            csv.writer(table).writerows([header, *kept])
        write_text_atomic(self.path, table.getvalue())

    def append(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow(row)


class _FileOnlyFilter(logging.Filter):
    """Keeps records marked ``extra={"file_only": True}`` (model summary, config) off the
    console, and progress lines off it while a live progress bar shows them."""

    def __init__(self, live: bool) -> None:
        super().__init__()
        self.live = live

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        return not (self.live and getattr(record, "progress", False))


class _ConsoleHandler(logging.Handler):
    def __init__(self, console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)


def setup_logging(log_path: Path | None, console, live: bool) -> logging.Logger:
    """The ``toolbox`` logger: every line to ``training.log`` (appended), the console lines
    to ``console``."""
    logger = logging.getLogger("toolbox")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    console_handler = _ConsoleHandler(console)
    console_handler.addFilter(_FileOnlyFilter(live))
    logger.addHandler(console_handler)
    if log_path is not None:
        file_handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def close_logging(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def describe_run(
    logger: logging.Logger,
    run_dir: Path,
    config: TrainingConfig,
    model: torch.nn.Module,
    splits,
    env: dict,
    *,
    resumed_at: tuple[int, int, int] | None,
    skipped_init_keys: list[str],
) -> None:
    """The run's header in the log: what trains on what, where, and from which state; the
    file also gets the architecture, the config and the environment."""
    if resumed_at is None:
        logger.info("run %s", run_dir)
    else:
        epoch, position, num_batches = resumed_at
        within = f", batch {position + 1} of {num_batches}" if position else ""
        logger.info("resuming %s at epoch %d%s", run_dir, epoch + 1, within)
    info = splits.info
    logger.info(
        "%s on %s: %s train / %s val samples, input %s, %d outputs (%s)",
        config.arch,
        config.dataset,
        f"{len(splits.train['target']):,}",
        f"{len(splits.val['target']):,}",
        "x".join(map(str, info.input_shape)),
        info.num_outputs,
        info.task,
    )
    num_params = sum(p.numel() for p in model.parameters())
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "model: %s parameters (%s trainable); device %s (%s), precision %s%s",
        f"{num_params:,}",
        f"{num_trainable:,}",
        env["device"],
        env["device_name"],
        config.precision,
        ", compiled" if config.compile else "",
    )
    if config.init_from is not None and resumed_at is None:
        skipped = f"; skipped (shape differs or absent): {', '.join(skipped_init_keys)}"
        logger.info("initialised from %s%s", config.init_from, skipped if skipped_init_keys else "")
    logger.info("architecture:\n%s", model, extra={"file_only": True})
    logger.info("config: %s", to_plain(config), extra={"file_only": True})
    logger.info("environment: %s", env, extra={"file_only": True})


def save_config(run_dir: Path, config: TrainingConfig) -> None:
    write_json(run_dir / CONFIG, to_plain(config))
