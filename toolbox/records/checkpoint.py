"""Checkpoints: plain dicts of tensors and Python values, written atomically, loaded safely."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolbox.errors import UserError
from toolbox.records.atomic import fsync_directory, is_temporary, temporary_path, write_atomically
from toolbox.records.layout import BEST, LAST, PER_EPOCH, per_epoch_name  # noqa: F401 - public here too

if TYPE_CHECKING:  # torch is imported where it is used: the run listing reads no checkpoint
    import torch

# The marker of toolbox checkpoints: this module's name when the format was made, kept so that
# every checkpoint ever written still loads.
FORMAT = "toolbox.checkpoint"
# torch.compile wraps a model; its state_dict keys gain this prefix, which we never save.
COMPILED_PREFIX = "_orig_mod."


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old file or
    the new one, never a torn one (``toolbox.records.atomic.write_atomically``)."""
    import torch

    write_atomically(path, lambda file: torch.save(state, file))


# What older versions named their temporaries: checkpoints (``.NAME.pth.tar.XXXXXXXX`` of
# mkstemp, ``.NAME.pth.tar.link``) and curves.png being drawn (``.curves.png.PID.HEX.tmp``).
_OLDER_TEMPORARIES = (".*.pth.tar.*", ".*.png.*.tmp")


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files that writes killed midway left behind: those of
    ``write_atomically`` (``.NAME.<16 hex>.tmp``), and those of older versions. Call it
    only while holding the run's lock: no live write is then under way."""
    directory = Path(directory)
    stale = {path for path in directory.glob(".*") if is_temporary(path.name)}
    stale.update(path for pattern in _OLDER_TEMPORARIES for path in directory.glob(pattern))
    stale = sorted(path for path in stale if path.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def keep_copy(directory: Path, source: str, name: str) -> None:
    """``directory/name`` becomes a copy of ``directory/source``: a hard link when the file
    system has them (instant, and later replacements of ``source`` do not touch it)."""
    target = Path(directory) / name
    temporary = temporary_path(target)
    try:
        os.link(Path(directory) / source, temporary)
    except OSError:  # no hard links on this file system: a copy, written as any other file
        with open(Path(directory) / source, "rb") as original:
            write_atomically(target, lambda file: shutil.copyfileobj(original, file, 1 << 20))
        return
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def prune_per_epoch(directory: Path, keep_last: int, keypoints: tuple[int, ...]) -> list[Path]:
    """Delete per-epoch checkpoints beyond the newest ``keep_last``; keypoints stay."""
    found = sorted(
        (int(match.group(1)), path)
        for path in Path(directory).iterdir()
        if (match := PER_EPOCH.fullmatch(path.name))
    )
    prunable = [path for epoch, path in found if epoch not in keypoints]
    doomed = prunable[: max(len(prunable) - keep_last, 0)]
    for path in doomed:
        path.unlink()
    return doomed


REQUIRED_KEYS = ("config", "model", "optimizer", "scheduler", "scaler", "loader", "rng", "progress")


def _read(path: Path, what: str, map_location: str | torch.device) -> Any:
    """``torch.load(path, weights_only=True)``: no code in the file runs; any failure to read
    it becomes one message naming the file."""
    import torch

    if path.is_dir():
        raise UserError(
            f"{what} {path} is a directory; give a checkpoint file such as {path / LAST}."
        )
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; check the path.")
    _check_zip_integrity(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds for bad files
        # "Unsupported global": the file names a callable to run, which is what a malicious
        # pickle does; other unpickling errors are damaged or foreign bytes.
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
            raise UserError(
                f"{what} {path} holds objects other than tensors and plain values; loading "
                "it could run code, so it is refused. Toolbox checkpoints never hold such objects."
            ) from error
        raise UserError(
            f"{what} {path} is not a loadable checkpoint ({_first_line(error)}); it may be "
            "truncated, corrupt, or not a toolbox checkpoint."
        ) from error


def _check_zip_integrity(path: Path, what: str) -> None:
    """torch.load does not check the CRCs of its zip members: damaged bytes inside a tensor
    would load as wrong weights. Reading the members once (~0.1 s per 100 MB) catches that."""
    if not zipfile.is_zipfile(path):
        return  # not a zip: torch.load reports what it is
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UserError(f"{what} {path} is a damaged file ({error}).") from error
    if damaged is not None:
        raise UserError(
            f"{what} {path} is damaged: its member {damaged} fails its checksum. Use another "
            "checkpoint (e.g. model_best.pth.tar or a checkpoint_e<N>.pth.tar)."
        )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A toolbox checkpoint, loaded with ``weights_only=True`` (no code runs), or a clear
    error naming the file."""
    path = Path(path)
    state = _read(path, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a toolbox checkpoint (it lacks the format marker {FORMAT!r}); "
            "give the checkpoint.pth.tar or model_best.pth.tar of a toolbox run."
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise UserError(
            f"{path} is an incomplete toolbox checkpoint: it lacks {', '.join(missing)}; "
            "give a checkpoint.pth.tar or model_best.pth.tar written by train.py."
        )
    return state


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights in ``path``: a toolbox checkpoint or a plain saved state_dict."""
    import torch

    path = Path(path)
    state = _read(path, "--init-from", "cpu")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state.get("model")
    if not (
        isinstance(state, dict)
        and state
        and all(isinstance(value, torch.Tensor) for value in state.values())
    ):
        raise UserError(
            f"--init-from {path} holds neither a toolbox checkpoint nor a state_dict of tensors."
        )
    return state


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_model_state(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str, *, strict: bool
) -> list[str]:
    """Load ``weights`` into ``model``. Strict: any missing, unexpected or mis-shaped key is a
    UserError listing them. Not strict (fine-tuning): the fitting keys load and the names of
    the others are returned."""
    weights = {key.replace(COMPILED_PREFIX, ""): value for key, value in weights.items()}
    own = model.state_dict()
    missing = sorted(own.keys() - weights.keys())
    unexpected = sorted(weights.keys() - own.keys())
    mismatched = sorted(
        f"{key} {tuple(weights[key].shape)} vs {tuple(own[key].shape)}"
        for key in own.keys() & weights.keys()
        if weights[key].shape != own[key].shape
    )
    problems = []
    if mismatched:
        problems.append(f"shapes differ (checkpoint vs model) for {_describe(mismatched)}")
    if missing:
        problems.append(f"the model has {_describe(missing)} but the checkpoint does not")
    if unexpected:
        problems.append(f"the checkpoint has {_describe(unexpected)} but the model does not")
    if strict and problems:
        raise UserError(
            f"{source}: its weights do not fit the model built from the config: "
            + "; ".join(problems)
            + ". Was the model's config changed since the checkpoint was written?"
        )
    fitting = {
        key: value for key, value in weights.items() if key in own and value.shape == own[key].shape
    }
    model.load_state_dict(fitting, strict=strict)
    return [key.split(" ")[0] for key in mismatched] + missing + unexpected


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else repr(error)


def newest_finite(run_dir: Path) -> Path | None:
    """The newest checkpoint in ``run_dir`` whose weights (and their average) are all finite,
    for the message of a diverged run; None if there is none. The trainer never writes
    non-finite weights, but a checkpoint of an older version may hold them."""
    import torch

    candidates = [Path(run_dir) / name for name in (LAST, BEST)]
    candidates += [path for path in Path(run_dir).glob("checkpoint_e*.pth.tar")]
    existing = [path for path in candidates if path.is_file()]
    for path in sorted(existing, key=lambda path: path.stat().st_mtime, reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable file is simply not a good checkpoint
            continue
        weights = [*state.get("model", {}).values(), *(state.get("ema") or {}).values()]
        if all(not w.is_floating_point() or bool(torch.isfinite(w).all()) for w in weights):
            return path
    return None
