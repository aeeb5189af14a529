"""Decoded datasets kept as a .pt of uint8 tensors, so that later runs skip decoding."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import torch

# Bump when the decoded layout changes, so old caches are not read as new ones.
CACHE_FORMAT = 1
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "toolbox"


def _writable(folder: Path) -> bool:
    """Whether to write into ``folder``. The mode bits count even for root, who could write
    anyway: a folder marked read-only (shared data) is left untouched."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IWUSR) and os.access(folder, os.W_OK)


def cache_path(dataset: str, folder: Path, sources: list[Path]) -> Path:
    """Where the cache of ``sources`` lives: beside them, or in the user's cache directory
    when their folder is read-only. The name carries a key of the files' names, sizes and
    modification times, so changed files get a new cache."""
    fingerprint = [CACHE_FORMAT] + [
        [path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in sorted(sources)
    ]
    key = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:16]
    name = f"toolbox-{dataset}-{key}.pt"
    if _writable(folder):
        return folder / name
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return USER_CACHE / digest / name


def load_or_decode(
    dataset: str, folder: Path, sources: list[Path], decode: Callable[[], dict]
) -> dict:
    """The decoded tensors of ``sources``: from the cache when it is current, else decoded
    (and cached, best effort: a cache that cannot be written only costs time)."""
    path = cache_path(dataset, folder, sources)
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            path.unlink(missing_ok=True)
    decoded = decode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"toolbox-{dataset}-*.pt"):
            stale.unlink()
        temporary = path.with_name(f".{path.name}.tmp")
        torch.save(decoded, temporary)
        os.replace(temporary, path)
    except OSError:
        pass
    return decoded
