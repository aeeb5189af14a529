"""A run's directory and its records: config, environment, log, metrics table, TensorBoard."""

from __future__ import annotations

import csv
import hashlib
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

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / RECORD
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    def start(
        self, config: TrainingConfig, command: list[str] | None = None, git: dict | None = None
    ) -> None:
        """A session begins: a new run, or a resume of this one. ``command`` is the script
        and arguments that made it (default: this process's own); ``git`` the code's state
        when the caller has it already (environment() reads it)."""
        code_dir = Path(toolbox.__file__).resolve().parent
        git = git or git_state(code_dir)
        if not self.data:
            self.data = {"run_id": uuid.uuid4().hex, "created": _now(), "sessions": []}
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

    def drop_rows_after(self, step: int) -> None:
        """Remove rows logged after ``step``: a resumed run is about to log them again."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as file:
            rows = list(csv.DictReader(file))
        kept = [row for row in rows if int(row["step"]) <= step]
        if len(kept) == len(rows):
            return
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
        os.replace(temporary, self.path)

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
