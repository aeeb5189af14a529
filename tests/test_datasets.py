"""Datasets: torchvision's on-disk formats written here in miniature, the download path
(served offline from a local HTTP server), the splits, and one run on the real MNIST."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import logging
import os
import pickle
import re
import socket
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from tests.conftest import SHARED_MNIST
from toolbox.cli.parse import parse_training_config
from toolbox.data import cache as data_cache
from toolbox.data import files as data_files
from toolbox.datasets.cifar import CIFAR10, CIFAR100
from toolbox.datasets.digits import Digits
from toolbox.datasets.mnist import MNIST, FashionMNIST
from toolbox.datasets.synthetic import Synthetic
from toolbox.errors import UserError

IMAGES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABELS = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
IDX_NAMES = [IMAGES["train"], LABELS["train"], IMAGES["test"], LABELS["test"]]
MNIST_KINDS = [(MNIST, "MNIST"), (FashionMNIST, "FashionMNIST")]


def flat(text: str) -> str:
    """``text`` with rich's line wrapping undone."""
    return " ".join(text.split())


# --- IDX files (MNIST, Fashion-MNIST) ---------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format: magic 0x000008<ndim>, big-endian sizes, data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.tobytes()


def numbered_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (count, 28, 28) uint8 images whose first two pixels spell their index, and
    random labels 0..9, so that every sample can be traced through the splits."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(count) % 256
    images[:, 0, 1] = np.arange(count) // 256
    return images, rng.integers(0, 10, count).astype(np.uint8)


def sample_ids(images: torch.Tensor) -> list[int]:
    """The index spelled by ``numbered_images`` in each of (N, 1, 28, 28) images."""
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


def idx_files(train: tuple, test: tuple) -> dict[str, bytes]:
    """The four IDX files of a dataset, uncompressed, by torchvision's file names."""
    return {
        IMAGES["train"]: idx_bytes(train[0]),
        LABELS["train"]: idx_bytes(train[1]),
        IMAGES["test"]: idx_bytes(test[0]),
        LABELS["test"]: idx_bytes(test[1]),
    }


def write_files(folder: Path, files: dict[str, bytes], gz: bool) -> dict[str, Path]:
    """Write ``files`` into ``folder`` (gzipped as ``name.gz`` when ``gz``); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in files.items():
        path = folder / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        paths[name] = path
    return paths


def write_mnist(
    root: Path, folder: str = "MNIST", gz: bool = True, num_train: int = 50, num_test: int = 12
) -> tuple[tuple, tuple, dict[str, Path]]:
    train = numbered_images(num_train, seed=1)
    test = numbered_images(num_test, seed=2)
    paths = write_files(root / folder / "raw", idx_files(train, test), gz)
    return train, test, paths


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "uncompressed"])
@pytest.mark.parametrize(("cls", "folder"), MNIST_KINDS, ids=["mnist", "fashion_mnist"])
def test_idx_files_load_as_uint8_images_and_int64_targets(tmp_path, cls, folder, gz):
    (train_images, train_labels), (test_images, test_labels), _ = write_mnist(tmp_path, folder, gz)
    splits = cls(root=str(tmp_path), download=False, val_fraction=0.2).build()

    assert splits.train["input"].shape == (40, 1, 28, 28)
    assert splits.val["input"].shape == (10, 1, 28, 28)
    assert splits.test["input"].shape == (12, 1, 28, 28)
    for split in (splits.train, splits.val, splits.test):
        assert split["input"].dtype == torch.uint8
        assert split["target"].dtype == torch.int64
        assert len(split["target"]) == len(split["input"])
    # The test split is the t10k files, in their order.
    assert torch.equal(splits.test["input"][:, 0], torch.from_numpy(test_images))
    assert splits.test["target"].tolist() == test_labels.tolist()
    # Every training sample keeps its own label.
    for split in (splits.train, splits.val):
        ids = sample_ids(split["input"])
        assert torch.equal(split["input"][:, 0], torch.from_numpy(train_images[ids]))
        assert split["target"].tolist() == train_labels[ids].tolist()

    source = getattr(torchvision.datasets, folder)
    info = splits.info
    assert (info.task, info.input_shape, info.num_outputs) == ("classification", (1, 28, 28), 10)
    assert info.class_names == tuple(source.classes)
    # Normalisation constants are in the stored units (0..255), not in 0..1.
    assert 20 < info.mean[0] < 100 and 50 < info.std[0] < 120

    if not gz:  # torchvision's own reader sees the same data in these files
        reference = source(str(tmp_path), train=False, download=False)
        assert torch.equal(reference.data, splits.test["input"][:, 0])
        assert torch.equal(reference.targets, splits.test["target"])


def test_val_split_is_deterministic_and_partitions_the_training_files(tmp_path):
    write_mnist(tmp_path, num_train=50)
    argv = "--dataset mnist --data.no-download --data.val-fraction 0.2".split()
    config = parse_training_config([*argv, "--data.root", str(tmp_path)])
    assert isinstance(config.data, MNIST)
    assert (config.data.val_fraction, config.data.download) == (0.2, False)

    torch.manual_seed(1)
    first = config.data.build()
    torch.manual_seed(2)  # the training seed must not move samples between splits
    second = config.data.build()
    train_ids, val_ids = sample_ids(first.train["input"]), sample_ids(first.val["input"])
    assert len(val_ids) == 10
    assert sample_ids(second.val["input"]) == val_ids
    assert sample_ids(second.train["input"]) == train_ids
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == list(range(50))
    # Each split keeps the files' order.
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)

    other_seed = MNIST(root=str(tmp_path), download=False, val_fraction=0.2, split_seed=1)
    assert sample_ids(other_seed.build().val["input"]) != val_ids

    everything = MNIST(root=str(tmp_path), download=False, val_fraction=0.0).build()
    assert sample_ids(everything.train["input"]) == list(range(50))
    assert len(everything.val["input"]) == 0


def test_uncompressed_file_is_preferred_over_its_gz_twin(tmp_path):
    """torchvision keeps both forms after extracting; either is a valid source."""
    write_mnist(tmp_path, gz=True)
    other = numbered_images(12, seed=7)
    raw = tmp_path / "MNIST" / "raw"
    (raw / IMAGES["test"]).write_bytes(idx_bytes(other[0]))
    splits = MNIST(root=str(tmp_path), download=False).build()
    assert torch.equal(splits.test["input"][:, 0], torch.from_numpy(other[0]))


# --- Missing and broken files ---------------------------------------------------------------


@pytest.mark.parametrize(("cls", "folder"), MNIST_KINDS, ids=["mnist", "fashion_mnist"])
def test_missing_files_with_download_off_name_folder_files_and_fix(tmp_path, cls, folder):
    _, _, paths = write_mnist(tmp_path, folder)
    paths[IMAGES["test"]].unlink()
    paths[LABELS["test"]].unlink()
    with pytest.raises(UserError) as caught:
        cls(root=str(tmp_path), download=False).build()
    message = str(caught.value)
    assert str(tmp_path / folder / "raw") in message
    assert IMAGES["test"] in message and LABELS["test"] in message
    assert IMAGES["train"] not in message and LABELS["train"] not in message
    assert "--data.root" in message and "--data.download" in message


def test_missing_mnist_through_the_cli_is_one_message_and_exit_code_2(
    train, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "300")
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = "--dataset mnist --data.no-download --epochs 1 --device cpu".split()
    code = train(*argv, "--data.root", str(empty))
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.count("error:") == 1
    message = flat(err)
    assert str(empty / "MNIST" / "raw") in message
    assert all(name in message for name in IDX_NAMES)
    assert "--data.root" in message and "--data.download" in message
    # Nothing was left behind: no run directory for a run that never started.
    assert not list((tmp_path / "outputs").glob("*"))


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-5])  # a few samples short of the size in the header
    elif how == "truncated_gz":
        gz = path.with_name(path.name + ".gz")
        compressed = gzip.compress(data, mtime=0)
        gz.write_bytes(compressed[: len(compressed) // 2])
        path.unlink()
    elif how == "bad_magic":
        path.write_bytes(b"\x00\x00\x77\x03" + data[4:])
    elif how == "header_only":
        path.write_bytes(data[:6])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "gz_name_but_not_gzip":
        path.with_name(path.name + ".gz").write_bytes(data)
        path.unlink()


@pytest.mark.parametrize(
    "how",
    ["truncated", "truncated_gz", "bad_magic", "header_only", "empty", "gz_name_but_not_gzip"],
)
@pytest.mark.parametrize("name", [IMAGES["train"], LABELS["test"]])
def test_corrupt_idx_file_is_a_user_error_naming_it(tmp_path, how, name):
    _, _, paths = write_mnist(tmp_path, gz=False)
    corrupt(paths[name], how)
    bad = next((tmp_path / "MNIST" / "raw").glob(f"{name}*"))
    with pytest.raises(UserError, match="not a readable IDX file") as caught:
        MNIST(root=str(tmp_path), download=False).build()
    assert str(bad) in str(caught.value)


@pytest.mark.parametrize("mistake", ["t10k_labels_as_train_labels", "images_not_28x28"])
def test_readable_idx_files_that_do_not_fit_mnist_are_a_user_error(tmp_path, mistake):
    _, (_, test_labels), _ = write_mnist(tmp_path, gz=False)
    raw = tmp_path / "MNIST" / "raw"
    if mistake == "t10k_labels_as_train_labels":
        wrong = raw / LABELS["train"]
        wrong.write_bytes(idx_bytes(test_labels))
    else:
        wrong = raw / IMAGES["train"]
        wrong.write_bytes(idx_bytes(np.zeros((50, 32, 32), np.uint8)))
    with pytest.raises(UserError) as caught:
        MNIST(root=str(tmp_path), download=False).build()
    assert str(wrong) in str(caught.value)


# --- Download through torchvision's code, served offline -------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A directory served over HTTP on 127.0.0.1: (directory, base URL ending in /).

    torchvision's download_url cannot read file:// URLs (it asks the response for a length),
    so the files travel over a real, local HTTP connection."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    directory = tmp_path / "server"
    directory.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield directory, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def serve_mnist(server_dir: Path, source, monkeypatch, mirrors: list[str]) -> tuple:
    """Tiny .gz files on the server, and torchvision's class pointed at them."""
    train, test, paths = write_mnist(server_dir, "files", gz=True)
    for path in paths.values():
        path.rename(server_dir / path.name)
    resources = [(f"{name}.gz", md5(server_dir / f"{name}.gz")) for name in IDX_NAMES]
    monkeypatch.setattr(source, "mirrors", mirrors)
    monkeypatch.setattr(source, "resources", resources)
    return train, test, resources


@pytest.mark.parametrize(("cls", "folder"), MNIST_KINDS, ids=["mnist", "fashion_mnist"])
def test_download_fetches_missing_files_with_torchvision(
    tmp_path, server, monkeypatch, cls, folder
):
    server_dir, url = server
    source = getattr(torchvision.datasets, folder)
    # The first mirror is down: the next one is tried.
    train, test, resources = serve_mnist(server_dir, source, monkeypatch, [closed_port_url(), url])
    root = tmp_path / "data"
    splits = cls(root=str(root), download=True, val_fraction=0.0).build()

    raw = root / folder / "raw"
    downloaded = [path.name for path in raw.iterdir() if not path.name.startswith("toolbox-")]
    assert sorted(downloaded) == sorted(name for name, _ in resources)
    assert all(md5(raw / name) == checksum for name, checksum in resources)
    assert torch.equal(splits.train["input"][:, 0], torch.from_numpy(train[0]))
    assert splits.test["target"].tolist() == test[1].tolist()
    # Once there, the files are read without the network.
    monkeypatch.setattr(source, "mirrors", [closed_port_url()])
    again = cls(root=str(root), download=False, val_fraction=0.0).build()
    assert torch.equal(again.test["input"], splits.test["input"])


@pytest.mark.parametrize("failure", ["wrong_md5", "unreachable"])
def test_failed_download_names_folder_and_files_and_leaves_no_bad_file(
    tmp_path, server, monkeypatch, failure
):
    server_dir, url = server
    _, _, resources = serve_mnist(server_dir, torchvision.datasets.MNIST, monkeypatch, [url])
    if failure == "wrong_md5":
        resources[0] = (resources[0][0], "0" * 32)
        monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
        expected = [resources[0][0]]
    else:
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [closed_port_url()])
        expected = [name for name, _ in resources]
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"

    with pytest.raises(UserError, match="download failed") as caught:
        MNIST(root=str(root), download=True).build()
    message = str(caught.value)
    assert str(raw) in message
    assert all(name in message for name in expected)
    # A file that failed its checksum must not pass for the real one on the next run.
    assert not (raw / resources[0][0]).exists()
    with pytest.raises(UserError, match="download is off") as caught:
        MNIST(root=str(root), download=False).build()
    assert resources[0][0] in str(caught.value)


# --- CIFAR-10 and CIFAR-100 pickled batches ---------------------------------------------------


def cifar_rows(count: int, seed: int) -> np.ndarray:
    """(count, 3072) uint8 rows: red plane, green plane, blue plane, each 32x32 row-major.
    The red plane is dark and the blue plane bright, and pixel (0, 0) of each plane holds
    the sample's index, so layout mistakes show."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate(
        [
            rng.integers(0, 64, (count, 1024)),
            rng.integers(96, 160, (count, 1024)),
            rng.integers(192, 256, (count, 1024)),
        ],
        axis=1,
    ).astype(np.uint8)
    rows[:, [0, 1024, 2048]] = np.arange(count)[:, None]
    return rows


def write_pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=2)  # the protocol of the original files


def write_cifar(root: Path, source) -> dict:
    """Tiny CIFAR files under ``root/<base_folder>`` in torchvision's layout; returns what
    was written: train rows and labels (batches in order), test rows and labels, classes."""
    folder = root / source.base_folder
    hundred = source is torchvision.datasets.CIFAR100
    num_classes = 100 if hundred else 10
    classes = [f"class_{index}" for index in range(num_classes)]
    rng = np.random.default_rng(3)
    written: dict = {"classes": classes}
    for split, files in (("train", source.train_list), ("test", source.test_list)):
        all_rows, all_labels = [], []
        for batch_idx, (name, _) in enumerate(files):
            count = 7 if split == "train" else 9
            rows = cifar_rows(count, seed=10 * batch_idx + (split == "test"))
            labels = rng.integers(0, num_classes, count).tolist()
            entry = {
                "batch_label": f"{split} batch {batch_idx}",
                "data": rows,
                "filenames": [f"{index}.png" for index in range(count)],
            }
            if hundred:
                entry |= {"fine_labels": labels, "coarse_labels": [x // 5 for x in labels]}
            else:
                entry["labels"] = labels
            write_pickle(folder / name, entry)
            all_rows.append(rows)
            all_labels += labels
        written[split] = (np.concatenate(all_rows), all_labels)
    if hundred:
        meta = {"fine_label_names": classes, "coarse_label_names": [f"c{i}" for i in range(20)]}
    else:
        meta = {"label_names": classes, "num_cases_per_batch": 7, "num_vis": 3072}
    write_pickle(folder / source.meta["filename"], meta)
    return written


CIFAR_KINDS = [(CIFAR10, torchvision.datasets.CIFAR10), (CIFAR100, torchvision.datasets.CIFAR100)]


@pytest.mark.parametrize(("cls", "source"), CIFAR_KINDS, ids=["cifar10", "cifar100"])
def test_cifar_batches_load_in_channel_first_layout(tmp_path, monkeypatch, cls, source):
    written = write_cifar(tmp_path, source)
    train_rows, train_labels = written["train"]
    test_rows, test_labels = written["test"]
    splits = cls(root=str(tmp_path), download=False, val_fraction=0.0).build()

    num_train = len(train_rows)  # 5 batches of 7 (CIFAR-10) or one of 7 (CIFAR-100)
    assert splits.train["input"].shape == (num_train, 3, 32, 32)
    assert splits.test["input"].shape == (9, 3, 32, 32)
    for split in (splits.train, splits.test):
        assert split["input"].dtype == torch.uint8 and split["target"].dtype == torch.int64
    assert splits.train["target"].tolist() == train_labels
    assert splits.test["target"].tolist() == test_labels
    images = splits.train["input"]
    # The first 1024 values of a row are the red channel, row by row.
    assert torch.equal(images[:, 0].reshape(num_train, -1), torch.from_numpy(train_rows[:, :1024]))
    assert torch.equal(images[:, 2].reshape(num_train, -1), torch.from_numpy(train_rows[:, 2048:]))
    assert torch.equal(images[3, 1, 0, :5], torch.from_numpy(train_rows[3, 1024:1029]))
    assert torch.equal(splits.test["input"].reshape(9, -1), torch.from_numpy(test_rows))

    info = splits.info
    assert info.class_names == tuple(written["classes"])
    assert (info.input_shape, info.num_outputs) == ((3, 32, 32), len(written["classes"]))
    assert len(info.mean) == len(info.std) == 3 and 100 < info.mean[0] < 150

    # torchvision's reader, told the checksums of these files, sees the same pictures.
    folder = tmp_path / source.base_folder
    monkeypatch.setattr(source, "train_list", [[n, md5(folder / n)] for n, _ in source.train_list])
    monkeypatch.setattr(source, "test_list", [[n, md5(folder / n)] for n, _ in source.test_list])
    monkeypatch.setattr(
        source, "meta", {**source.meta, "md5": md5(folder / source.meta["filename"])}
    )
    reference = source(str(tmp_path), train=True, download=False)
    assert torch.equal(torch.from_numpy(reference.data), images.permute(0, 2, 3, 1))
    assert reference.targets == train_labels and reference.classes == written["classes"]


def test_cifar_val_split_partitions_the_training_batches(tmp_path):
    write_cifar(tmp_path, torchvision.datasets.CIFAR10)
    first = CIFAR10(root=str(tmp_path), download=False, val_fraction=0.2).build()
    second = CIFAR10(root=str(tmp_path), download=False, val_fraction=0.2).build()
    assert len(first.val["input"]) == 7 and len(first.train["input"]) == 28
    assert torch.equal(first.val["input"], second.val["input"])
    rows = {tuple(image.flatten().tolist()) for image in first.train["input"]}
    held = {tuple(image.flatten().tolist()) for image in first.val["input"]}
    assert len(rows) == 28 and len(held) == 7 and not rows & held


@pytest.mark.parametrize(("cls", "source"), CIFAR_KINDS, ids=["cifar10", "cifar100"])
def test_missing_cifar_files_with_download_off(tmp_path, cls, source):
    write_cifar(tmp_path, source)
    folder = tmp_path / source.base_folder
    gone = source.test_list[0][0]
    (folder / gone).unlink()
    with pytest.raises(UserError, match="download is off") as caught:
        cls(root=str(tmp_path), download=False).build()
    message = str(caught.value)
    assert str(folder) in message
    assert re.search(r"files not found: (.*) are missing", message).group(1) == gone
    assert "--data.root" in message and "--data.download" in message


@pytest.mark.parametrize("damage", ["garbage", "no_data_key", "wrong_size"])
def test_corrupt_cifar_file_is_a_user_error_naming_it(tmp_path, damage):
    write_cifar(tmp_path, torchvision.datasets.CIFAR10)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if damage == "garbage":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "no_data_key":
        write_pickle(path, {"labels": [0, 1]})
    else:
        write_pickle(path, {"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]})
    with pytest.raises(UserError) as caught:
        CIFAR10(root=str(tmp_path), download=False).build()
    assert str(path) in str(caught.value)


def test_cifar_download_extracts_torchvision_archive(tmp_path, server, monkeypatch):
    server_dir, url = server
    source = torchvision.datasets.CIFAR10
    staging = tmp_path / "staging"
    written = write_cifar(staging, source)
    archive = server_dir / source.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / source.base_folder, arcname=source.base_folder)
    monkeypatch.setattr(source, "url", url + source.filename)
    monkeypatch.setattr(source, "tgz_md5", md5(archive))

    root = tmp_path / "data"
    splits = CIFAR10(root=str(root), download=True, val_fraction=0.0).build()
    assert splits.test["target"].tolist() == written["test"][1]
    assert (root / source.base_folder / "batches.meta").is_file()

    monkeypatch.setattr(source, "tgz_md5", "0" * 32)
    with pytest.raises(UserError, match="download failed") as caught:
        CIFAR10(root=str(tmp_path / "other"), download=True).build()
    assert str(tmp_path / "other" / source.base_folder) in str(caught.value)


# --- The decoded-data cache: verified on load, rebuilt when unsound --------------------------

IDX_FILE_NAMES = [f"{name}.gz" for name in IDX_NAMES]  # as write_mnist writes them


@pytest.fixture
def toolbox_warnings():
    """The messages of warnings logged to the ``toolbox`` logger, the one the trainer shows
    and writes to training.log (it does not propagate to pytest's handler once set up)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("toolbox")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def idx_reads(monkeypatch):
    """How many IDX files have been decoded so far: 0 while a cache serves the data."""
    reads = Counter()
    read_idx = data_files.read_idx

    def counted(path):
        reads["files"] += 1
        return read_idx(path)

    monkeypatch.setattr(data_files, "read_idx", counted)
    return reads


def flip_a_bit_in_a_training_image(cache: Path, root: Path) -> None:
    data = bytearray(cache.read_bytes())
    train_images, _ = numbered_images(50, seed=1)  # as write_mnist wrote them
    offset = data.index(train_images[25].tobytes())  # tensor bytes are stored uncompressed
    data[offset + 100] ^= 0x10
    cache.write_bytes(bytes(data))


def truncate(cache: Path, root: Path) -> None:
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])


def cache_of(cls, root: Path, folder: str) -> Path:
    """The cache file of ``cls`` built from 30 training images under ``root/folder``."""
    write_mnist(root, folder, num_train=30)
    cls(root=str(root), download=False).build()
    (cache,) = (root / folder / "raw").glob("toolbox-*.pt")
    return cache


def put_another_datasets_cache(cache: Path, root: Path) -> None:
    os.replace(cache_of(FashionMNIST, root / "other", "FashionMNIST"), cache)


def put_the_cache_of_other_files(cache: Path, root: Path) -> None:
    os.replace(cache_of(MNIST, root / "other", "MNIST"), cache)


def put_a_plain_torch_file(cache: Path, root: Path) -> None:
    torch.save({"train": torch.zeros(3), "test": torch.zeros(3)}, cache)


def put_the_format_1_layout(cache: Path, root: Path) -> None:
    """What toolbox wrote before caches were checked: the decoded splits alone."""
    splits = MNIST(root=str(root), download=False, val_fraction=0.0, cache=False).build()
    torch.save({"train": splits.train, "test": splits.test}, cache)


def mark_as_another_format(cache: Path, root: Path) -> None:
    payload = torch.load(cache, weights_only=True)
    torch.save({**payload, "format": data_cache.CACHE_FORMAT + 1}, cache)


CACHE_DAMAGE = {
    "truncated": (truncate, "unreadable"),
    "bit_flipped": (flip_a_bit_in_a_training_image, "train/input fails its checksum"),
    "another_datasets_cache_renamed": (put_another_datasets_cache, "toolbox-fashion_mnist-"),
    "other_files_cache_renamed": (put_the_cache_of_other_files, "renamed"),
    "plain_torch_file": (put_a_plain_torch_file, "not a toolbox cache"),
    "format_1_layout": (put_the_format_1_layout, "not a toolbox cache of format 2"),
    "another_format_number": (mark_as_another_format, "cache format 3, not 2"),
}


@pytest.mark.parametrize("damage", sorted(CACHE_DAMAGE))
def test_unsound_cache_is_logged_and_rebuilt_then_used(
    tmp_path, idx_reads, toolbox_warnings, damage
):
    (train_images, train_labels), _, _ = write_mnist(tmp_path, num_train=50)
    raw = tmp_path / "MNIST" / "raw"
    MNIST(root=str(tmp_path), download=False, val_fraction=0.0).build()
    (cache,) = raw.glob("toolbox-*.pt")
    spoil, reason = CACHE_DAMAGE[damage]
    spoil(cache, tmp_path)
    idx_reads.clear()

    rebuilt = MNIST(root=str(tmp_path), download=False, val_fraction=0.0).build()
    assert idx_reads["files"] == 4  # decoded again, from the original files
    assert torch.equal(rebuilt.train["input"][:, 0], torch.from_numpy(train_images))
    assert rebuilt.train["target"].tolist() == train_labels.tolist()
    assert len(toolbox_warnings) == 1, toolbox_warnings
    assert str(cache) in toolbox_warnings[0] and reason in toolbox_warnings[0]

    # The rebuilt cache is sound: used as it is, with nothing to say.
    toolbox_warnings.clear()
    again = MNIST(root=str(tmp_path), download=False, val_fraction=0.0).build()
    assert idx_reads["files"] == 4 and toolbox_warnings == []
    assert torch.equal(again.train["input"], rebuilt.train["input"])
    assert sorted(path.name for path in raw.iterdir()) == sorted([cache.name, *IDX_FILE_NAMES])


def splits_of(target_dtype: torch.dtype) -> dict:
    images = torch.arange(4 * 784, dtype=torch.int64).remainder(256).to(torch.uint8)
    split = {"input": images.reshape(4, 1, 28, 28), "target": torch.arange(4).to(target_dtype)}
    return {"train": split, "test": split}


def test_cache_laid_out_otherwise_than_expected_is_logged_and_rebuilt(tmp_path, toolbox_warnings):
    """A cache sound in itself, written by a decoder of another layout under the same
    format number, does not pass for the layout the caller expects."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"raw data")
    per_sample = {"input": (torch.uint8, (1, 28, 28)), "target": (torch.int64, ())}
    expected = {"train": per_sample, "test": per_sample}
    data_cache.load_or_decode("mnist", tmp_path, [source], lambda: splits_of(torch.int32))

    decodes = []

    def decode() -> dict:
        decodes.append(1)
        return splits_of(torch.int64)

    loaded = data_cache.load_or_decode("mnist", tmp_path, [source], decode, expected)
    assert decodes == [1] and loaded["train"]["target"].dtype == torch.int64
    assert len(toolbox_warnings) == 1
    assert (
        "train/target is torch.int32 of shape (4,), not torch.int64 of shape (N)"
        in (toolbox_warnings[0])
    )

    toolbox_warnings.clear()
    again = data_cache.load_or_decode("mnist", tmp_path, [source], decode, expected)
    assert decodes == [1] and toolbox_warnings == []
    assert torch.equal(again["test"]["target"], loaded["test"]["target"])


def test_failed_cache_write_leaves_no_file_and_the_data_is_still_built(tmp_path, monkeypatch):
    (train_images, _), _, _ = write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"

    def full_disk(payload, path):
        # What torch.save does on a full disk: part of the file written, then this error.
        Path(path).write_bytes(b"PK\x03\x04 part of an archive")
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 704")

    monkeypatch.setattr(torch, "save", full_disk)
    splits = MNIST(root=str(tmp_path), download=False, val_fraction=0.0).build()
    assert torch.equal(splits.train["input"][:, 0], torch.from_numpy(train_images))
    assert sorted(path.name for path in raw.iterdir()) == sorted(IDX_FILE_NAMES)


# --- digits and synthetic ---------------------------------------------------------------------


def rows_of(split: dict) -> Counter:
    return Counter(
        (image.numpy().tobytes(), int(target))
        for image, target in zip(split["input"], split["target"], strict=True)
    )


def test_digits_splits_all_1797_images_disjointly_and_deterministically():
    from sklearn.datasets import load_digits

    splits = Digits().build()
    sizes = [len(splits.split(name)["input"]) for name in ("train", "val", "test")]
    assert sizes == [1294, 144, 359]  # 20% test, then 10% of the rest for validation
    for name in ("train", "val", "test"):
        split = splits.split(name)
        assert split["input"].shape[1:] == (1, 8, 8) and split["input"].dtype == torch.uint8
        assert split["target"].dtype == torch.int64
    digits = load_digits()
    everything = {
        "input": torch.as_tensor(digits.images, dtype=torch.uint8).unsqueeze(1),
        "target": torch.as_tensor(digits.target),
    }
    together = rows_of(splits.train) + rows_of(splits.val) + rows_of(splits.test)
    assert together == rows_of(everything)  # each image once, with its own label

    again = Digits().build()
    for name in ("train", "val", "test"):
        assert torch.equal(again.split(name)["input"], splits.split(name)["input"])
        assert torch.equal(again.split(name)["target"], splits.split(name)["target"])
    other = Digits(split_seed=1).build()
    assert not torch.equal(other.test["input"], splits.test["input"])
    assert len(Digits(test_fraction=0.5).build().test["input"]) == round(1797 * 0.5)
    assert splits.info.class_names == tuple("0123456789")
    assert 0 < splits.info.mean[0] < 16


def test_synthetic_shapes_follow_the_input_shape_option():
    config = parse_training_config(
        "--dataset synthetic --data.input-shape 3 4 5 --data.num-train 100 --data.num-test 20 "
        "--data.num-classes 4".split()
    )
    assert config.data.input_shape == (3, 4, 5)
    splits = config.data.build()
    assert splits.train["input"].shape == (90, 3, 4, 5)
    assert splits.val["input"].shape == (10, 3, 4, 5)
    assert splits.test["input"].shape == (20, 3, 4, 5)
    assert splits.info.input_shape == (3, 4, 5)
    targets = torch.cat([splits.train["target"], splits.val["target"], splits.test["target"]])
    assert targets.dtype == torch.int64 and set(targets.tolist()) == {0, 1, 2, 3}
    assert splits.info.num_outputs == 4 and splits.info.class_names == ("0", "1", "2", "3")

    vectors = Synthetic(input_shape=(7,), num_train=30, num_test=5).build()
    assert vectors.train["input"].shape == (27, 7)


def test_synthetic_regression_has_float_targets_per_output():
    splits = Synthetic(
        task="regression", num_classes=3, num_train=50, num_test=10, input_shape=(6,), noise=0.0
    ).build()
    assert splits.info.task == "regression" and splits.info.class_names == ()
    assert splits.train["target"].shape == (45, 3)
    assert splits.train["target"].dtype == torch.float32
    # Without noise the targets are an exact linear map of the inputs.
    inputs = torch.cat([splits.train["input"], splits.test["input"]])
    targets = torch.cat([splits.train["target"], splits.test["target"]])
    weights = torch.linalg.lstsq(inputs, targets).solution
    assert torch.allclose(inputs @ weights, targets, atol=1e-4)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_synthetic_same_seed_same_data(task):
    first, second = (Synthetic(task=task, num_train=64, num_test=16).build() for _ in range(2))
    other = Synthetic(task=task, num_train=64, num_test=16, seed=1).build()
    for name in ("train", "val", "test"):
        for key in ("input", "target"):
            assert torch.equal(first.split(name)[key], second.split(name)[key])
    assert not torch.equal(first.train["input"], other.train["input"])


# --- End to end -------------------------------------------------------------------------------


def two_patterns(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 lights the top half of the image, class 1 the bottom half; plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    images = rng.integers(0, 60, (count, 28, 28))
    images[labels == 0, :14] += 180
    images[labels == 1, 14:] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def test_train_and_test_on_tiny_idx_mnist(train, evaluate, tmp_path):
    root = tmp_path / "data"
    write_files(
        root / "MNIST" / "raw",
        idx_files(two_patterns(256, seed=0), two_patterns(64, seed=1)),
        gz=True,
    )
    argv = "--arch mlp --dataset mnist --data.no-download --epochs 2 --batch-size 32 --device cpu"
    assert train(*argv.split(), "--data.root", str(root), "--run-name", "tiny") == 0
    run_dir = tmp_path / "outputs" / "tiny"
    assert evaluate(str(run_dir), "--device", "cpu") == 0
    metrics = pd.read_csv(run_dir / "test" / "test_metrics.csv")
    assert metrics["accuracy"].item() >= 0.95
    assert len(pd.read_csv(run_dir / "test" / "test_predictions.csv")) == 64


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def require_real_mnist() -> None:
    """Skip where the shared MNIST is absent, except on CI, where that is a failure."""
    raw = SHARED_MNIST / "MNIST" / "raw"
    if not raw.is_dir():
        message = f"the real MNIST is not at {raw} (see ../shared/README.md)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.slow
def test_one_epoch_mlp_on_the_real_mnist_reaches_095(train, evaluate, tmp_path):
    require_real_mnist()
    before = snapshot(SHARED_MNIST)
    argv = "--arch mlp --dataset mnist --data.no-download --epochs 1 --run-name real".split()
    assert train(*argv, "--data.root", str(SHARED_MNIST)) == 0
    run_dir = tmp_path / "outputs" / "real"
    assert evaluate(str(run_dir)) == 0
    accuracy = pd.read_csv(run_dir / "test" / "test_metrics.csv")["accuracy"].item()
    assert accuracy >= 0.95, f"test accuracy {accuracy:.4f} after one epoch"
    assert len(pd.read_csv(run_dir / "test" / "test_predictions.csv")) == 10_000
    assert snapshot(SHARED_MNIST) == before, "the shared MNIST folder was written to"


@pytest.mark.slow
def test_real_mnist_splits_and_normalisation():
    require_real_mnist()
    splits = MNIST(root=str(SHARED_MNIST), download=False).build()
    assert [len(splits.split(name)["target"]) for name in ("train", "val", "test")] == [
        54_000,
        6_000,
        10_000,
    ]
    pixels = torch.cat([splits.train["input"], splits.val["input"]]).float()
    # The normalisation constants match the stored pixels (0..255 units).
    assert pixels.mean().item() == pytest.approx(splits.info.mean[0], rel=0.01)
    assert pixels.std().item() == pytest.approx(splits.info.std[0], rel=0.01)
    assert torch.bincount(splits.test["target"]).tolist()[:2] == [980, 1135]
