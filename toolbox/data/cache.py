"""Decoded datasets kept as a .pt of uint8 tensors, so that later runs skip decoding.

A cache is used only once it proves itself: its format number, the name it was written
under (so that another dataset's cache, or that of other files, renamed is not taken for
this one), its layout of splits of batch-first tensors (checked against the caller's when
given), and a CRC32 of each tensor's name, dtype, shape and bytes. A cache that fails is
logged and decoded again, never used and never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from toolbox.data.atomic import write_atomically

# Bump when the decoded layout changes, so old caches are not read as new ones.
# 2: the tensors are stored with the cache's format, name and checksums.
CACHE_FORMAT = 2
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "toolbox"
_PAYLOAD_KEYS = {"format", "name", "tensors", "crc32"}

Layout = Mapping[str, Mapping[str, tuple[torch.dtype, tuple[int, ...]]]]
"""Per split, per tensor name: its dtype and its shape after the first (sample) dimension."""


class _UnusableCacheError(Exception):
    """What makes a cache file unfit to use."""


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


def _crc32(name: str, tensor: torch.Tensor) -> int:
    """CRC32 of a tensor's name, dtype, shape and bytes. A CRC rather than sha256: the
    cache is guarded against accidental damage, of which a CRC finds every burst of up to
    32 bits and misses other damage once in 4e9, at under half sha256's cost (55 MB of
    MNIST: about 18 ms against 46). Forging it gains nothing: the cache lies beside the
    data files or in the user's own cache folder."""
    header = f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode()
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(data, zlib.crc32(header))


def _by_name(tensors: dict) -> dict[str, torch.Tensor]:
    """Each tensor of ``{split: {key: tensor}}`` under the name ``split/key``."""
    return {
        f"{split}/{key}": tensor
        for split, entries in tensors.items()
        for key, tensor in entries.items()
    }


def _verified(payload: object, name: str, expected: Layout | None) -> dict:
    """The decoded tensors in ``payload``, read from the cache file ``name``; an
    _UnusableCacheError says why they are not to be used."""
    if not isinstance(payload, dict) or set(payload) != _PAYLOAD_KEYS:
        held = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise _UnusableCacheError(f"not a toolbox cache of format {CACHE_FORMAT} (it holds {held})")
    if payload["format"] != CACHE_FORMAT:
        raise _UnusableCacheError(f"cache format {payload['format']!r}, not {CACHE_FORMAT}")
    if payload["name"] != name:
        raise _UnusableCacheError(f"the cache {payload['name']!r}, renamed")
    tensors = payload["tensors"]
    splits_of_tensors = isinstance(tensors, dict) and all(
        isinstance(entries, dict)
        and entries
        and all(isinstance(tensor, torch.Tensor) and tensor.ndim > 0 for tensor in entries.values())
        for entries in tensors.values()
    )
    if not splits_of_tensors:
        raise _UnusableCacheError("its tensors are not splits of batch-first tensors")
    for split, entries in tensors.items():
        lengths = {key: len(tensor) for key, tensor in entries.items()}
        if len(set(lengths.values())) > 1:
            raise _UnusableCacheError(f"the {split} split's tensors differ in length: {lengths}")
    named, checksums = _by_name(tensors), payload["crc32"]
    if not isinstance(checksums, dict) or set(named) != set(checksums):
        raise _UnusableCacheError(f"its tensors {sorted(named)} do not match its checksums")
    if expected is not None:
        wanted = _by_name(expected)
        if set(named) != set(wanted):
            raise _UnusableCacheError(f"it holds {sorted(named)}, not {sorted(wanted)}")
        for tensor_name, (dtype, sample_shape) in wanted.items():
            tensor = named[tensor_name]
            if tensor.dtype != dtype or tuple(tensor.shape[1:]) != tuple(sample_shape):
                raise _UnusableCacheError(
                    f"{tensor_name} is {tensor.dtype} of shape {tuple(tensor.shape)}, not "
                    f"{dtype} of shape (N{''.join(f', {size}' for size in sample_shape)})"
                )
    for tensor_name, tensor in named.items():
        if _crc32(tensor_name, tensor) != checksums[tensor_name]:
            raise _UnusableCacheError(f"{tensor_name} fails its checksum (the file is damaged)")
    return tensors


def _write(dataset: str, path: Path, decoded: dict) -> None:
    """Save ``decoded`` as the cache ``path`` in place of the dataset's older caches there,
    atomically: a reader sees the old file or the whole new one, never part of it."""
    payload = {
        "format": CACHE_FORMAT,
        "name": path.name,
        "tensors": decoded,
        "crc32": {name: _crc32(name, tensor) for name, tensor in _by_name(decoded).items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"toolbox-{dataset}-*.pt"):
        stale.unlink()
    # A temporary of its own, so that processes decoding at once (torchrun's ranks) do not
    # write into one file; a failed write (a full disk: torch.save raises a RuntimeError)
    # leaves none behind.
    write_atomically(path, lambda temporary: torch.save(payload, temporary), by_path=True)


def load_or_decode(
    dataset: str,
    folder: Path,
    sources: list[Path],
    decode: Callable[[], dict],
    expected: Layout | None = None,
) -> dict:
    """The decoded tensors of ``sources``, ``{split: {key: batch-first tensor}}``: from the
    cache when it is current and sound (and laid out as ``expected``, when given), else
    decoded (and cached, best effort: a cache that cannot be written only costs time)."""
    path = cache_path(dataset, folder, sources)
    if path.is_file():
        try:
            payload = torch.load(path, weights_only=True)
        except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            # The first line only: torch's unpickling errors run to paragraphs of advice.
            first_line = str(error).strip().partition("\n")[0]
            reason = f"unreadable ({type(error).__name__}: {first_line})"
        else:
            try:
                return _verified(payload, path.name, expected)
            except _UnusableCacheError as unusable:
                reason = str(unusable)
        logging.getLogger("toolbox").warning(
            "decoded-data cache %s not used: %s; decoding the %s files again",
            path,
            reason,
            dataset,
        )
    decoded = decode()
    try:
        _write(dataset, path, decoded)
    except (OSError, RuntimeError):
        pass
    return decoded


def image_layout(shape: tuple[int, ...], splits: tuple[str, ...] = ("train", "test")) -> Layout:
    """The layout of a decoded image classification dataset: uint8 images of ``shape`` and
    int64 labels in every split, for ``load_or_decode(expected=...)``."""
    sample = {"input": (torch.uint8, tuple(shape)), "target": (torch.int64, ())}
    return {split: sample for split in splits}
