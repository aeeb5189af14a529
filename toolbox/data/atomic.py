"""The one atomic, durable file write of the toolbox: a crash, a kill or a power cut at any
moment leaves the old file or the new one whole, never a torn one.

Torch-free and free of toolbox imports: it sits in the lowest layer that both the dataset
cache (``toolbox.data.cache``) and the run records (``toolbox.records``) may import, so
that every file the toolbox writes goes through these few lines. The records reach it as
``toolbox.records.atomic``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# ".<name>.<16 hex digits>.tmp": the name of every temporary written here, so that the
# leftovers of a killed write are told apart from any other file (see is_temporary).
TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{16}\.tmp")


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (same directory, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is that of a temporary made by ``temporary_path``."""
    return TEMPORARY.fullmatch(name) is not None


def write_atomically(
    path: Path | str, write: Callable[[BinaryIO], object], *, by_path: bool = False
) -> None:
    """Replace ``path`` with what ``write(file)`` writes into a binary file.

    ``write`` fills a temporary file with a name of its own in the same directory (so two
    writers never share one), created with the mode any other new file gets (0o666 less
    the umask, applied by the kernel: no process-wide umask juggling, which would race with
    other threads); it is flushed and fsynced, renamed over ``path`` with ``os.replace``,
    and the directory is fsynced so that the rename survives a power cut too. On any
    failure, ``KeyboardInterrupt`` and ``SystemExit`` included, the temporary is removed
    and the exception propagates; ``path`` is then untouched.

    ``by_path=True`` hands ``write`` the temporary's path instead of an open file, for
    writers that open the file themselves (``torch.save(obj, path)``).
    """
    path = Path(path)
    for _attempt in range(100):
        temporary = temporary_path(path)
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # 1 in 2**64; another name then
            continue
        break
    else:  # pragma: no cover - would take a broken random source
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        if by_path:
            os.close(descriptor)
            write(temporary)
            descriptor = os.open(temporary, os.O_WRONLY)  # to fsync what the writer wrote
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        else:
            with os.fdopen(descriptor, "wb") as file:
                write(file)
                file.flush()
                # Without it a power cut soon after the rename can leave the name on an
                # empty file.
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk leaves no half-written temporary
        raise
    fsync_directory(path.parent)


def write_text(path: Path | str, text: str) -> None:
    """``write_atomically`` of ``text`` as UTF-8, newlines as they are."""
    data = text.encode("utf-8")
    write_atomically(path, lambda file: file.write(data))


def write_json(path: Path | str, data: object) -> None:
    """``write_atomically`` of ``data`` as indented JSON, ending with a newline."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def fsync_directory(directory: Path | str) -> None:
    """Make a rename (or a new link) in ``directory`` durable: without this a power cut can
    undo it after it was reported done."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
