"""One process per run directory: an OS lock on ``<run>/run.lock``, and moving a dead
attempt's directory aside. Torch-free, so the command line can ask before importing torch.

The lock is ``fcntl.flock`` on a file inside the run directory. The kernel releases it when
the holding process ends, however it ends (``kill -9`` and crashes included), so a lock is
never stale; the file itself stays and is only rewritten with the next holder's pid and host.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from toolbox.errors import UserError
from toolbox.records.layout import LOCK

NAME_MAX = 255  # bytes in one path component on Linux and macOS file systems


class RunLock:
    """The lock of one run directory, held by this process from ``acquire`` until
    ``release`` or the process's end."""

    def __init__(self, run_dir: Path, descriptor: int) -> None:
        self.run_dir = run_dir
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, run_dir: Path, purpose: str) -> RunLock:
        """Take ``run_dir``'s lock, or raise a UserError naming the process that holds it.
        ``purpose`` says what this process meant to do (e.g. "--resume <path>")."""
        run_dir = Path(run_dir)
        try:
            descriptor = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise UserError(
                f"{purpose}: cannot open the lock file {run_dir / LOCK} ({error}); check that "
                f"{run_dir} exists and is writable."
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(descriptor)
            os.close(descriptor)
            raise UserError(
                f"{purpose}: {run_dir} is in use by another live process ({describe(owner)}); "
                "two processes would overwrite each other's checkpoints and records. Wait for "
                "it to end (or stop it: a SIGTERM saves its position), then run this again; "
                "or start a separate run with another --run-name."
            ) from None
        os.ftruncate(descriptor, 0)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        os.pwrite(descriptor, (json.dumps(owner) + "\n").encode(), 0)
        return cls(run_dir, descriptor)

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the last descriptor drops the flock
            self._descriptor = None


def holder(run_dir: Path) -> dict | None:
    """The process holding ``run_dir``'s lock ({"pid", "host", "since"}), or None when no
    live process holds it."""
    try:
        descriptor = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no toolbox process has ever held it
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_owner(descriptor) or {}
    finally:
        os.close(descriptor)
    return None


def describe(owner: dict | None) -> str:
    if not owner:
        return "its pid is not recorded"
    return f"pid {owner.get('pid')} on host {owner.get('host')}, since {owner.get('since')}"


def move_aside(run_dir: Path, label: str) -> Path:
    """Rename ``run_dir`` to ``<name>.<label>-YYMMDD_HHMMSS`` beside it (kept, not removed:
    its log may say why the attempt stopped) and return the new path. A long run name is
    shortened so that the new name still fits in one path component."""
    run_dir = Path(run_dir)
    suffix = f".{label}-{datetime.now():%y%m%d_%H%M%S}"
    room = NAME_MAX - len(suffix.encode())
    stem = run_dir.name.encode()[:room].decode(errors="ignore")
    for attempt in range(1000):
        extra = f"_{attempt}" if attempt else ""
        aside = run_dir.with_name(stem[: len(stem) - len(extra)] + suffix + extra)
        if not aside.exists():
            break
    run_dir.rename(aside)
    return aside


def _read_owner(descriptor: int) -> dict | None:
    try:
        owner = json.loads(os.pread(descriptor, 4096, 0).decode())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
