"""Reading torchvision's on-disk formats (IDX for MNIST, pickled batches for CIFAR) into
tensors, and fetching missing files with torchvision's own download code."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from toolbox.errors import UserError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (optionally gzipped) as a tensor of its stored shape and type."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
        if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
            raise ValueError("bad magic number")
        ndim = data[3]
        shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        array = np.frombuffer(data, dtype=IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
        array = array.reshape(shape)
    except (OSError, ValueError, IndexError, EOFError) as error:
        raise UserError(
            f"{path} is not a readable IDX file ({error}); delete it so that it is "
            "downloaded again, or replace it with the original file."
        ) from error
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


def find_file(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``folder``: torchvision keeps both forms."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_files_error(
    dataset: str, root: Path, folder: Path, names: list[str], reason: str
) -> UserError:
    """``folder`` is the dataset's folder under ``root``, as torchvision lays it out."""
    fetch = (
        "or run once with network access to download them"
        if reason.startswith("download failed")
        else "or allow the download with --data.download (needs network access)"
    )
    return UserError(
        f"{dataset} files not found: {', '.join(names)} are missing from {folder} ({reason}). "
        f"Put the original files there, or point --data.root at the directory that holds "
        f"{folder.relative_to(root)}/, {fetch}."
    )


def fetch_idx_files(
    dataset: str,
    root: Path,
    folder: Path,
    mirrors: list[str],
    resources: list[tuple[str, str]],
    download: bool,
) -> dict[str, Path]:
    """Paths to each IDX file of ``resources`` (name.gz, md5) in ``folder`` under ``root``,
    downloading the missing ones."""
    from torchvision.datasets.utils import download_url

    def stem(filename: str) -> str:
        return filename.removesuffix(".gz")

    found = {stem(name): find_file(folder, stem(name)) for name, _ in resources}
    missing = [(name, md5) for name, md5 in resources if found[stem(name)] is None]
    if missing and not download:
        names = [name for name, _ in missing]
        raise missing_files_error(dataset, root, folder, names, "download is off")
    for name, md5 in missing:
        errors = []
        for mirror in mirrors:
            try:
                download_url(f"{mirror}{name}", root=str(folder), filename=name, md5=md5)
                break
            except Exception as error:  # noqa: BLE001 - every failure is reported below
                errors.append(f"{mirror}: {error}")
        else:
            # download_url leaves a file that failed its md5 check (or a partial one) in
            # place; it must not pass for the original on the next run.
            (folder / name).unlink(missing_ok=True)
            still_missing = [other for other, _ in missing if found[stem(other)] is None]
            raise missing_files_error(
                dataset, root, folder, still_missing, "download failed: " + "; ".join(errors)
            )
        found[stem(name)] = folder / name
    return found


def unpickle_cifar(path: Path) -> dict:
    """One of CIFAR's pickled files (a batch or the meta file) as a dict."""
    try:
        with open(path, "rb") as file:
            # The official format is a Python pickle; only files fetched from the dataset's
            # own address (md5-checked) or placed there by the user are read.
            return pickle.load(file, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UserError(
            f"{path} is not a readable CIFAR file ({error}); delete its folder so that it is "
            "downloaded again, or replace it with the original files."
        ) from error


def read_cifar_batches(folder: Path, names: list[str], label_key: str) -> dict[str, torch.Tensor]:
    """CIFAR's pickled batches as uint8 images (N, 3, 32, 32) and int64 targets."""
    images, labels = [], []
    for name in names:
        entry = unpickle_cifar(folder / name)
        try:
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry[label_key])
        except (KeyError, ValueError, TypeError) as error:
            raise UserError(
                f"{folder / name} does not hold CIFAR data ({error!r}); replace it with the "
                "original file."
            ) from error
    return {
        "input": torch.from_numpy(np.concatenate(images)),
        "target": torch.tensor(labels, dtype=torch.int64),
    }
