"""The folder dataset against the real MNIST: its IDX files written out as one PNG per
image in the ImageFolder layout train/<digit>/<i>.png, test/<digit>/<i>.png must train a
cnn as well as the IDX files themselves, and name each test prediction by its file."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.test_datasets import SHARED_MNIST, require_real_mnist
from toolbox.data.files import find_file, read_idx

RAW = SHARED_MNIST / "MNIST" / "raw"
SPLITS = {"train": "train", "test": "t10k"}
"""Each folder split and the prefix of its IDX files."""
OPTIONS = "--arch cnn --epochs 1 --batch-size 64 --device cpu --seed 0".split()


def idx_split(prefix: str):
    """The images (N, 28, 28) and labels (N,) of one MNIST split, as numpy arrays."""
    images = find_file(RAW, f"{prefix}-images-idx3-ubyte")
    labels = find_file(RAW, f"{prefix}-labels-idx1-ubyte")
    assert images is not None and labels is not None, f"MNIST IDX files missing from {RAW}"
    return read_idx(images).numpy(), read_idx(labels).numpy()


def write_png_folder(root: Path) -> dict[str, list[int]]:
    """MNIST as <root>/<split>/<digit>/<i>.png, i the image's place in its IDX file;
    returns each split's labels."""
    from PIL import Image

    labels_of = {}
    for split, prefix in SPLITS.items():
        images, labels = idx_split(prefix)
        for digit in range(10):
            (root / split / str(digit)).mkdir(parents=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image, mode="L").save(root / split / str(label) / f"{i}.png")
        labels_of[split] = labels.tolist()
    return labels_of


def accuracy_of(run_dir: Path) -> float:
    return pd.read_csv(run_dir / "test" / "test_metrics.csv")["accuracy"].item()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_one_epoch_cnn_on_mnist_as_png_folder_matches_the_idx_files(train, evaluate, tmp_path):
    require_real_mnist()
    folder = tmp_path / "mnist_png"
    labels = write_png_folder(folder)
    assert [len(labels[split]) for split in SPLITS] == [60_000, 10_000]

    runs = {
        "idx": ["--dataset", "mnist", "--data.root", str(SHARED_MNIST), "--data.no-download"],
        "folder": ["--dataset", "folder", "--data.root", str(folder)],
    }
    accuracy = {}
    for name, dataset in runs.items():
        assert train(*OPTIONS, *dataset, "--run-name", name) == 0, name
        run_dir = tmp_path / "outputs" / name
        assert evaluate(str(run_dir), "--device", "cpu") == 0, name
        accuracy[name] = accuracy_of(run_dir)
    print(f"test accuracy after one epoch: {accuracy}")
    assert min(accuracy.values()) > 0.95, accuracy
    assert abs(accuracy["folder"] - accuracy["idx"]) <= 0.01, accuracy

    predictions = pd.read_csv(
        tmp_path / "outputs" / "folder" / "test" / "test_predictions.csv",
        dtype={"path": str, "target_name": str},
    )
    assert len(predictions) == 10_000
    assert "test/7/0.png" in set(predictions["path"])  # the first test image is a 7
    seen = set()
    for path, target, target_name in predictions[["path", "target", "target_name"]].itertuples(
        index=False
    ):
        match = re.fullmatch(r"test/(\d)/(\d+)\.png", path)
        assert match, path
        digit, i = match[1], int(match[2])
        assert target_name == digit, (path, target_name)
        assert target == int(digit), (path, target)  # classes in sorted (digit) order
        assert labels["test"][i] == int(digit), (path, labels["test"][i])
        seen.add(i)
    assert seen == set(range(10_000))
