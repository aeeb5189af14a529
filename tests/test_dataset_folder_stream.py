"""--data.loader stream: a folder's images decoded and transformed one by one when a batch
needs them (resume and torchrun are in test_dataset_folder.py, beside the memory path's)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from tests.test_dataset_folder import COLOURS, FAST, flat, write_images
from tests.test_resume import assert_same_weights
from toolbox.data.loaders import make_loader
from toolbox.datasets.folder import Folder
from toolbox.errors import UserError

CPU = torch.device("cpu")


def folder_args(root) -> list[str]:
    return ["--dataset", "folder", "--data.root", str(root), "--data.image-size", "8"]


def epochs_of_batches(split, epochs: int, num_workers: int) -> list[list[torch.Tensor]]:
    loader = make_loader(split, 8, kind="stream", device=CPU, train=True, num_workers=num_workers)
    try:
        return [[batch["input"] for batch in loader] for _ in range(epochs)]
    finally:
        loader.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_without_transforms_trains_exactly_like_memory(train, tmp_path, workers):
    """The same order, the same decoded pixels, the same statistics: the same weights."""
    root = tmp_path / "images"
    write_images(root, count=20)
    common = [*folder_args(root), *FAST, "--epochs", "2", "--data.no-cache"]
    assert train(*common, "--run-name", "memory") == 0
    streamed = ["--data.loader", "stream", "--num-workers", str(workers)]
    assert train(*common, *streamed, "--run-name", "stream") == 0
    assert_same_weights(tmp_path / "outputs" / "memory", tmp_path / "outputs" / "stream")


def test_a_streamed_run_is_tested_with_each_file_named(train, evaluate, tmp_path):
    root = tmp_path / "images"
    files = write_images(root, count=20)
    argv = [*folder_args(root), *FAST, "--data.loader", "stream", "--run-name", "s"]
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "s"
    assert evaluate(str(run_dir), "--device", "cpu") == 0
    predictions = pd.read_csv(run_dir / "test" / "test_predictions.csv")
    assert len(predictions) == 6 and set(predictions["path"]) <= set(files)
    assert (predictions["target_name"] == predictions["path"].str.split("/").str[0]).all()


def test_per_sample_transforms_are_the_same_with_or_without_workers(tmp_path):
    """Seeded per sample and epoch, not by whichever worker decodes it; new each epoch."""
    write_images(tmp_path, count=12)
    split = (
        Folder(
            root=str(tmp_path),
            image_size=8,
            loader="stream",
            augment="crop_flip",
            auto_augment="trivialaugment",
            random_erasing=0.5,
        )
        .build()
        .train
    )
    in_process = epochs_of_batches(split, 2, num_workers=0)
    in_workers = epochs_of_batches(split, 2, num_workers=2)
    for epoch, (ours, theirs) in enumerate(zip(in_process, in_workers, strict=True)):
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b), f"epoch {epoch}"
    plain = Folder(root=str(tmp_path), image_size=8, loader="stream").build().train
    untransformed = torch.cat(epochs_of_batches(plain, 1, num_workers=0)[0])  # same order
    first, second = torch.cat(in_process[0]), torch.cat(in_process[1])
    assert not torch.equal(first, untransformed)
    assert not torch.equal(first, second)  # each epoch transforms anew


def test_transforms_in_the_training_process_leave_its_generator_alone(tmp_path):
    """With no workers the transforms run where dropout draws its masks; they must not
    move that generator, or adding an augmentation would change the model's noise."""
    write_images(tmp_path, count=8)
    split = (
        Folder(root=str(tmp_path), image_size=8, loader="stream", auto_augment="randaugment")
        .build()
        .train
    )
    torch.manual_seed(5)
    before = torch.get_rng_state()
    epochs_of_batches(split, 1, num_workers=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_streaming_needs_only_a_sample_of_the_folder_up_front(tmp_path, monkeypatch):
    """Building a streamed folder decodes at most STATISTICS_SAMPLE images, spread over the
    training split, and keeps none of the others in memory."""
    from toolbox.datasets import folder as folder_module

    write_images(tmp_path, count=10)
    monkeypatch.setattr(folder_module, "STATISTICS_SAMPLE", 5)
    decoded = []
    real = folder_module.Folder._decode

    def counting(self, files, positions=None):
        decoded.append(len(files) if positions is None else len(positions))
        return real(self, files, positions)

    monkeypatch.setattr(folder_module.Folder, "_decode", counting)
    splits = Folder(root=str(tmp_path), image_size=8, loader="stream").build()
    assert decoded == [5]
    assert splits.count("train") + splits.count("val") + splits.count("test") == 30
    assert splits.first_inputs(64).shape == (splits.count("train"), 3, 8, 8)


def test_a_file_that_breaks_midway_stops_the_run_naming_it(tmp_path):
    write_images(tmp_path, count=8)
    split = Folder(root=str(tmp_path), image_size=8, loader="stream").build().train
    broken = split.paths[3]
    with open(broken, "wb") as file:
        file.write(b"not an image any more")
    with pytest.raises(UserError) as raised:
        epochs_of_batches(split, 1, num_workers=2)
    message = flat(str(raised.value))
    assert broken in message and "--data.loader memory" in message
    assert "Traceback" not in message


def test_an_image_of_another_size_without_image_size_is_refused_by_name(tmp_path):
    write_images(tmp_path, count=6, size=(12, 12))
    split = Folder(root=str(tmp_path), loader="stream").build().val
    odd = split.paths[0]
    Image.new("RGB", (10, 10)).save(odd, format="PNG")  # rewritten at another size
    loader = make_loader(split, 8, kind="stream", device=CPU, train=False)
    with pytest.raises(UserError) as raised:
        list(loader)
    message = flat(str(raised.value))
    assert odd in message and "(3, 10, 10)" in message and "--data.image-size" in message


def test_a_corrupt_file_among_the_sampled_ones_exits_2_before_training(train, tmp_path, capsys):
    write_images(tmp_path / "images", count=10)
    bad = tmp_path / "images" / "sky" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = [*folder_args(tmp_path / "images"), *FAST, "--data.loader", "stream"]
    code = train(*argv, "--data.val-fraction", "0.01", "--data.test-fraction", "0.01")
    assert code == 2
    err = flat(capsys.readouterr().err)
    assert "sky/broken.png" in err and "--data.loader memory" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--data.auto-augment", "randaugment"], "--data.auto-augment"),
        (["--data.random-erasing", "0.25"], "--data.random-erasing"),
        (["--data.loader", "stream", "--data.random-erasing", "1.5"], "--data.random-erasing"),
    ],
)
def test_per_sample_transforms_without_streaming_exit_2(train, tmp_path, capsys, argv, named):
    write_images(tmp_path / "images", count=4)
    assert train(*folder_args(tmp_path / "images"), *FAST, *argv) == 2
    err = flat(capsys.readouterr().err)
    assert named in err and "Traceback" not in err


def test_a_dataset_that_cannot_stream_says_so(train, capsys):
    assert train("--dataset", "digits", "--data.loader", "stream", *FAST) == 2
    err = flat(capsys.readouterr().err)
    assert "--data.loader stream" in err and "'digits'" in err and "--dataset folder" in err


def test_classes_are_named_the_same_streamed_or_not(tmp_path):
    write_images(tmp_path, count=6)
    streamed = Folder(root=str(tmp_path), image_size=8, loader="stream").build()
    in_memory = Folder(root=str(tmp_path), image_size=8, cache=False).build()
    assert streamed.info == in_memory.info
    assert streamed.info.class_names == tuple(sorted(COLOURS))
    assert streamed.sources == in_memory.sources
