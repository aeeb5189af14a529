"""Checkpoints: plain dicts of tensors and Python values, written atomically, loaded safely."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from toolbox.errors import UserError

FORMAT = "toolbox.checkpoint"
LAST = "checkpoint.pth.tar"
BEST = "model_best.pth.tar"


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old file or
    the new one, never a torn one: temporary file in the same directory, fsync, rename."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A toolbox checkpoint, loaded with ``weights_only=True`` (no code runs), or a clear
    error naming the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a checkpoint file such as {path / LAST}.")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
    ) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UserError(
            f"{path} is not a loadable checkpoint ({first_line[:300]}); it may be truncated, "
            "corrupt, or not a toolbox checkpoint."
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a toolbox checkpoint (it lacks the format marker {FORMAT!r}); "
            "give the checkpoint.pth.tar or model_best.pth.tar of a toolbox run."
        )
    return state
