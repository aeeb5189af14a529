"""The folder dataset: images written here with PIL in the ImageFolder layout."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from toolbox.data import cache as data_cache
from toolbox.datasets.folder import Folder

COLOURS = {"grey cat": (220, 40, 40), "ünïcode": (40, 220, 40), "sky": (40, 40, 220)}
FAST = ["--arch", "mlp", "--batch-size", "16", "--device", "cpu", "--log-every", "5"]


def flat(text: str) -> str:
    """``text`` with rich's line wrapping undone."""
    return " ".join(text.split())


def write_images(
    folder: Path,
    colours: dict[str, tuple[int, int, int]] = COLOURS,
    count: int = 12,
    size: tuple[int, int] = (12, 12),
    seed: int = 0,
    grey: bool = False,
) -> list[str]:
    """``count`` noisy images of each class's colour in ``folder/<class>``, PNG and JPEG by
    turns; returns their paths relative to ``folder``."""
    rng = np.random.default_rng(seed)
    written = []
    for name, colour in colours.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            noise = rng.integers(-25, 25, (size[1], size[0], 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if grey:
                image = image.convert("L")
            file = f"{name}/{seed}-{i}.{'png' if i % 2 else 'jpg'}"
            image.save(folder / file)
            written.append(file)
    return written


def test_trains_and_test_predictions_name_each_file_and_class(train, evaluate, tmp_path):
    root = tmp_path / "my images"
    files = write_images(root, count=30)
    argv = ["--dataset", "folder", "--data.root", str(root), "--data.image-size", "8"]
    assert train(*argv, *FAST, "--epochs", "3", "--run-name", "folder") == 0
    run_dir = tmp_path / "outputs" / "folder"
    assert evaluate(str(run_dir), "--device", "cpu") == 0
    accuracy = pd.read_csv(run_dir / "test" / "test_metrics.csv")["accuracy"].item()
    assert accuracy >= 0.8, f"test accuracy {accuracy:.3f}; chance is 0.33"
    predictions = pd.read_csv(run_dir / "test" / "test_predictions.csv")
    assert len(predictions) == 9  # 10% of 90
    assert set(predictions["path"]) <= set(files)
    # Each file's class is its folder's name, unicode and spaces included.
    assert (predictions["target_name"] == predictions["path"].str.split("/").str[0]).all()
    assert set(predictions["target_name"]) == set(predictions["prediction_name"]) == set(COLOURS)


def test_train_val_test_folders_are_the_splits(tmp_path):
    root = tmp_path / "data"
    train_files = write_images(root / "train", count=10, seed=1)
    val_files = write_images(root / "val", count=2, seed=2)
    test_files = write_images(root / "test", count=3, seed=3)
    splits = Folder(root=str(root)).build()
    assert sorted(splits.sources["train"]) == sorted(f"train/{f}" for f in train_files)
    assert sorted(splits.sources["val"]) == sorted(f"val/{f}" for f in val_files)
    assert sorted(splits.sources["test"]) == sorted(f"test/{f}" for f in test_files)
    assert splits.info.class_names == tuple(sorted(COLOURS))
    assert splits.info.input_shape == (3, 12, 12)
    names = [splits.info.class_names[t] for t in splits.test["target"].tolist()]
    assert names == [path.split("/")[1] for path in splits.sources["test"]]


def test_without_val_folder_val_is_held_out_of_train(tmp_path):
    root = tmp_path / "data"
    train_files = write_images(root / "train", count=10, seed=1)
    write_images(root / "test", count=3, seed=3)
    splits = Folder(root=str(root), val_fraction=0.2).build()
    assert len(splits.sources["val"]) == 6
    assert sorted(splits.sources["train"] + splits.sources["val"]) == sorted(
        f"train/{f}" for f in train_files
    )
    assert len(splits.sources["test"]) == 9


def test_hold_out_is_deterministic_disjoint_and_covers_every_file(tmp_path):
    files = write_images(tmp_path, count=20)
    first = Folder(root=str(tmp_path), split_seed=5, cache=False).build().sources
    again = Folder(root=str(tmp_path), split_seed=5).build().sources
    other = Folder(root=str(tmp_path), split_seed=6).build().sources
    assert first == again
    assert first["test"] != other["test"]
    parts = [set(first[name]) for name in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(set.union(*parts)) == len(files)
    assert set.union(*parts) == set(files)
    assert len(first["test"]) == 6 and len(first["val"]) == 5  # 10% of 60, of 54


def test_the_cache_is_reused_and_rebuilt_when_a_file_is_added(tmp_path, monkeypatch):
    write_images(tmp_path, count=6)
    before = Folder(root=str(tmp_path), image_size=8).build()
    (cache,) = tmp_path.glob("toolbox-folder-8-*.pt")

    def no_decoding(self, files):
        raise AssertionError("decoded again despite a current cache")

    with monkeypatch.context() as patch:
        patch.setattr(Folder, "_decode", no_decoding)
        again = Folder(root=str(tmp_path), image_size=8).build()
    assert again.sources == before.sources
    assert (again.train["input"] == before.train["input"]).all()

    write_images(tmp_path, {"sky": COLOURS["sky"]}, count=1, seed=9)
    grown = Folder(root=str(tmp_path), image_size=8).build()
    assert sum(map(len, grown.sources.values())) == 19
    assert "sky/9-0.jpg" in sum(grown.sources.values(), [])
    assert not cache.exists()  # replaced by the new files' cache


def test_moving_a_file_to_another_class_rebuilds_the_cache(tmp_path):
    write_images(tmp_path, {"grey cat": COLOURS["grey cat"]}, count=4, seed=0)
    write_images(tmp_path, {"sky": COLOURS["sky"]}, count=4, seed=5)
    Image.new("RGB", (12, 12), COLOURS["sky"]).save(tmp_path / "grey cat" / "1.png")
    Folder(root=str(tmp_path)).build()
    # Its name, size and time kept, and still between the grey cat and the sky files.
    os.replace(tmp_path / "grey cat" / "1.png", tmp_path / "sky" / "1.png")
    splits = Folder(root=str(tmp_path), val_fraction=0.0, test_fraction=0.01).build()
    sources = sum(splits.sources.values(), [])
    targets = [t for part in (splits.train, splits.val, splits.test) for t in part["target"]]
    assert splits.info.class_names[targets[sources.index("sky/1.png")]] == "sky"


def test_a_read_only_folder_gets_its_cache_in_the_user_cache(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    write_images(root, count=3)
    monkeypatch.setattr(data_cache, "USER_CACHE", tmp_path / "user cache")
    root.chmod(0o555)
    try:
        first = Folder(root=str(root)).build()
        monkeypatch.setattr(Folder, "_decode", lambda self, files: pytest.fail("decoded again"))
        again = Folder(root=str(root)).build()
    finally:
        root.chmod(0o755)
    assert not list(root.glob("toolbox-*.pt"))
    assert len(list((tmp_path / "user cache").rglob("toolbox-folder-*.pt"))) == 1
    assert again.sources == first.sources


def test_a_corrupt_file_is_skipped_with_a_count(tmp_path, caplog):
    files = write_images(tmp_path, count=5)
    (tmp_path / "sky" / "x.png").write_bytes(np.random.default_rng(0).bytes(300))
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        splits = Folder(root=str(tmp_path)).build()
    assert "skipped 1 unreadable files" in caplog.text and "sky/x.png" in caplog.text
    assert sorted(sum(splits.sources.values(), [])) == sorted(files)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        Folder(root=str(tmp_path)).build()  # from the cache: still said
    assert "skipped 1 unreadable files" in caplog.text


def test_a_corrupt_file_stops_the_run_under_bad_files_error(train, tmp_path, capsys):
    write_images(tmp_path / "data", count=5)
    (tmp_path / "data" / "sky" / "x.png").write_bytes(np.random.default_rng(0).bytes(300))
    argv = ["--dataset", "folder", "--data.root", str(tmp_path / "data")]
    assert train(*argv, "--data.bad-files", "error", *FAST) == 2
    err = flat(capsys.readouterr().err)
    assert "sky/x.png" in err and "--data.bad-files skip" in err
    assert "Traceback" not in err


def test_mixed_sizes_need_image_size(train, tmp_path, capsys):
    root = tmp_path / "data"
    write_images(root, {"a": (200, 0, 0)}, count=3, size=(12, 12))
    write_images(root, {"b": (0, 200, 0)}, count=3, size=(16, 10))
    assert train("--dataset", "folder", "--data.root", str(root), *FAST) == 2
    err = flat(capsys.readouterr().err)
    assert "differ in size" in err and "--data.image-size" in err
    splits = Folder(root=str(root), image_size=6).build()
    assert splits.info.input_shape == (3, 6, 6)


def test_grey_images_get_one_channel_unless_asked_for_three(tmp_path):
    write_images(tmp_path, count=4, grey=True)
    grey = Folder(root=str(tmp_path)).build()
    assert grey.info.input_shape == (1, 12, 12) and len(grey.info.mean) == 1
    rgb = Folder(root=str(tmp_path), channels="3").build()
    assert rgb.info.input_shape == (3, 12, 12)
    # Grey stays grey: the three channels are equal.
    assert (rgb.train["input"][:, 0] == rgb.train["input"][:, 2]).all()


def test_colour_images_keep_their_colours(tmp_path):
    write_images(tmp_path, {"red": (250, 0, 0)}, count=2)
    write_images(tmp_path, {"grey": (128, 128, 128)}, count=2, grey=True)
    splits = Folder(root=str(tmp_path), val_fraction=0.0).build()
    assert splits.info.input_shape == (3, 12, 12)
    red = splits.info.class_names.index("red")
    reds = splits.train["input"][splits.train["target"] == red].float()
    assert reds[:, 0].mean() > 200 and reds[:, 1].mean() < 50


@pytest.mark.parametrize(
    ("layout", "named"),
    [
        ("missing", "does not exist"),
        ("loose", "no class sub-folders"),
        ("empty class", "empty one"),
        ("no images", "has no images"),
    ],
)
def test_folders_that_are_not_image_folders_exit_2(train, tmp_path, capsys, layout, named):
    root = tmp_path / "data"
    if layout == "loose":
        write_images(tmp_path, {"data": (1, 2, 3)}, count=2)
    elif layout == "empty class":
        write_images(root, count=2)
        (root / "empty one").mkdir()
    elif layout == "no images":
        (root / "a").mkdir(parents=True)
        (root / "a" / "notes.txt").write_text("not an image")
    assert train("--dataset", "folder", "--data.root", str(root), *FAST) == 2
    err = flat(capsys.readouterr().err)
    assert named in err and "--data.root" in err
    assert "Traceback" not in err


def test_train_py_without_a_root_says_the_root_is_missing(train, capsys):
    assert train("--dataset", "folder") == 2
    assert "--data.root is not given" in " ".join(capsys.readouterr().err.split())


STREAMED = ["--data.loader", "stream", "--data.random-erasing", "0.5"]


@pytest.mark.parametrize(
    "loading",
    [
        ["--data.loader", "memory"],
        ["--data.loader", "dataloader"],
        # Per-sample transforms in two workers, and in the training process itself.
        [*STREAMED, "--num-workers", "2", "--data.auto-augment", "trivialaugment"],
        [*STREAMED, "--data.auto-augment", "randaugment"],
    ],
    ids=["memory", "dataloader", "stream-2-workers", "stream-no-workers"],
)
def test_a_folder_run_stopped_mid_epoch_resumes_exactly(
    train, tmp_path, monkeypatch, signal_at_step, loading
):
    from tests.test_resume import assert_resumes_like_a_straight_run

    root = tmp_path / "images"
    write_images(root, count=30)
    argv = ["--dataset", "folder", "--data.root", str(root), "--data.image-size", "8"]
    argv += ["--arch", "cnn", "--data.augment", "crop_flip", "--batch-size", "8"]
    argv += ["--device", "cpu", "--epochs", "2", *loading]
    outputs = tmp_path / "outputs"  # stopped after step 11: in the second epoch of 9 steps
    assert_resumes_like_a_straight_run(train, outputs, argv, 11, signal_at_step, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_a_folder_trains_under_torchrun_like_one_process_with_twice_the_batch(
    train, tmp_path, loader
):
    from tests.test_distributed import torchrun, weights

    root = tmp_path / "images"
    write_images(root, count=30)
    common = ["--dataset", "folder", "--data.root", str(root), "--data.image-size", "8"]
    common += ["--data.loader", loader]
    # No dropout: its masks differ between two ranks and one process.
    common += ["--arch", "mlp", "--model.dropout", "0", "--device", "cpu", "--epochs", "2"]
    common += ["--grad-accum", "2"]
    common += ["--output-dir", str(tmp_path)]
    two = torchrun(*common, "--batch-size", "4", "--run-name", "two")  # both ranks decode
    assert two.returncode == 0, two.stdout + two.stderr
    assert train(*common, "--batch-size", "8", "--run-name", "one") == 0
    one_weights, two_weights = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key, value in one_weights.items():
        torch.testing.assert_close(two_weights[key], value, rtol=0, atol=1e-6)
