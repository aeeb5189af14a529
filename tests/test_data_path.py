"""The in-memory data path: decoded-tensor cache, placement, batched augmentation."""

from __future__ import annotations

import stat

import pytest
import torch
import torchvision

from tests.conftest import TINY
from tests.test_datasets import write_cifar, write_mnist
from toolbox.data import cache as data_cache
from toolbox.data.augment import BatchAugment
from toolbox.data.loaders import InMemoryLoader, Normalizer, make_loader
from toolbox.datasets.cifar import CIFAR10
from toolbox.datasets.mnist import MNIST


def cache_files(folder) -> list[str]:
    return sorted(path.name for path in folder.glob("toolbox-*.pt"))


def test_decoded_mnist_is_cached_beside_its_files_and_read_back(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    first = MNIST(root=str(tmp_path), download=False).build()
    assert len(cache_files(raw)) == 1

    def no_decoding(path):
        raise AssertionError("decoded again although the cache is current")

    monkeypatch.setattr("toolbox.data.files.read_idx", no_decoding)
    again = MNIST(root=str(tmp_path), download=False).build()
    for split in ("train", "val", "test"):
        for key in ("input", "target"):
            assert torch.equal(first.split(split)[key], again.split(split)[key])
    assert again.train["input"].dtype == torch.uint8


def test_changed_files_rebuild_the_cache(tmp_path):
    write_mnist(tmp_path, num_train=50)
    raw = tmp_path / "MNIST" / "raw"
    MNIST(root=str(tmp_path), download=False, val_fraction=0.0).build()
    before = cache_files(raw)
    write_mnist(tmp_path, num_train=60)  # new files: other sizes, later modification times
    rebuilt = MNIST(root=str(tmp_path), download=False, val_fraction=0.0).build()
    assert len(rebuilt.train["target"]) == 60
    after = cache_files(raw)
    assert len(after) == 1 and after != before  # the stale cache was replaced


def test_no_cache_writes_nothing(tmp_path):
    write_mnist(tmp_path)
    MNIST(root=str(tmp_path), download=False, cache=False).build()
    assert cache_files(tmp_path / "MNIST" / "raw") == []


def test_read_only_data_is_never_written_the_cache_goes_to_the_user_cache(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    user_cache = tmp_path / "user-cache"
    monkeypatch.setattr(data_cache, "USER_CACHE", user_cache)
    raw.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)  # like ../shared
    try:
        MNIST(root=str(tmp_path), download=False).build()
        assert cache_files(raw) == []
        assert len(list(user_cache.rglob("toolbox-mnist-*.pt"))) == 1
    finally:
        raw.chmod(0o755)


def test_a_damaged_cache_is_rebuilt(tmp_path):
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    first = MNIST(root=str(tmp_path), download=False).build()
    (cache,) = raw.glob("toolbox-*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    again = MNIST(root=str(tmp_path), download=False).build()
    assert torch.equal(first.train["input"], again.train["input"])


def test_cifar_is_cached_too(tmp_path):
    write_cifar(tmp_path, torchvision.datasets.CIFAR10)
    first = CIFAR10(root=str(tmp_path), download=False).build()
    folder = tmp_path / torchvision.datasets.CIFAR10.base_folder
    assert len(cache_files(folder)) == 1
    again = CIFAR10(root=str(tmp_path), download=False).build()
    assert torch.equal(first.test["input"], again.test["input"])


# --- loaders -----------------------------------------------------------------------------


def split_of(count: int) -> dict[str, torch.Tensor]:
    return {"input": torch.arange(count).float().unsqueeze(1), "target": torch.arange(count)}


@pytest.mark.parametrize("kind", ["memory", "dataloader"])
def test_training_batches_cover_each_sample_at_most_once_per_epoch(kind):
    loader = make_loader(
        split_of(103), 10, kind=kind, device=torch.device("cpu"), train=True, seed=3
    )
    assert len(loader) == 10  # the last partial batch is dropped
    for _ in range(2):
        seen = torch.cat([batch["target"] for batch in loader])
        assert len(seen) == 100 and len(set(seen.tolist())) == 100
        assert all(torch.equal(b["input"][:, 0].long(), b["target"]) for b in loader)


def test_the_two_loaders_draw_the_same_batches():
    memory, workers = (
        make_loader(split_of(64), 8, kind=kind, device=torch.device("cpu"), train=True, seed=5)
        for kind in ("memory", "dataloader")
    )
    for _ in range(2):
        for a, b in zip(memory, workers, strict=True):
            assert torch.equal(a["target"], b["target"])


def test_evaluation_batches_keep_the_order_and_every_sample():
    loader = make_loader(split_of(23), 10, kind="memory", device=torch.device("cpu"), train=False)
    assert torch.equal(torch.cat([b["target"] for b in loader]), torch.arange(23))


def test_placement_on_cpu_keeps_batches_where_they_are():
    for placement in ("auto", "device", "pinned"):
        loader = make_loader(
            split_of(10),
            4,
            kind="memory",
            device=torch.device("cpu"),
            train=True,
            placement=placement,
        )
        assert isinstance(loader, InMemoryLoader) and loader.on_device


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_placement_copies_batches_to_the_gpu():
    device = torch.device("cuda")
    loader = make_loader(
        split_of(64), 8, kind="memory", device=device, train=True, placement="pinned"
    )
    assert loader.tensors["input"].is_pinned() and not loader.on_device
    batch = next(iter(loader))
    assert batch["input"].device.type == "cuda"


def test_channels_last_normalizer_keeps_values():
    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    plain = Normalizer((10.0, 20.0, 30.0), (2.0, 3.0, 4.0), 3, torch.device("cpu"))
    last = Normalizer((10.0, 20.0, 30.0), (2.0, 3.0, 4.0), 3, torch.device("cpu"), True)
    out = last(images)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, plain(images))
    expected = (images[:, 1].float() - 20.0) / 3.0
    torch.testing.assert_close(plain(images)[:, 1], expected)


# --- augmentation ------------------------------------------------------------------------


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    images = torch.randint(1, 255, (64, 3, 8, 8), dtype=torch.uint8)
    out = BatchAugment("crop", torch.device("cpu"), seed=0)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for sample in range(64):
        windows = [
            padded[sample, :, top : top + 8, left : left + 8]
            for top in range(9)
            for left in range(9)
        ]
        assert any(torch.equal(out[sample], window) for window in windows), sample
    assert not torch.equal(out, images)  # 64 samples: some were shifted


def test_flip_mirrors_about_half_the_batch():
    images = torch.randint(0, 255, (400, 1, 4, 4), dtype=torch.uint8)
    out = BatchAugment("crop_flip", torch.device("cpu"), seed=0, padding=0)(images)
    flipped = [
        torch.equal(o, i.flip(2)) and not torch.equal(o, i)
        for o, i in zip(out, images, strict=True)
    ]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 150 < sum(flipped) < 250


def test_augmentation_is_seeded_and_resumes_from_its_state():
    images = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    a = BatchAugment("crop_flip", torch.device("cpu"), seed=1)
    b = BatchAugment("crop_flip", torch.device("cpu"), seed=1)
    assert torch.equal(a(images), b(images))
    state = a.state_dict()
    expected = a(images)
    c = BatchAugment("crop_flip", torch.device("cpu"), seed=99)
    c.load_state_dict(state)
    assert torch.equal(c(images), expected)


@pytest.mark.slow
def test_augmented_training_resumes_bit_exactly(train, tmp_path, monkeypatch, signal_at_step):
    from tests.test_resume import assert_resumes_like_a_straight_run

    argv = [
        *TINY,
        "--data.input-shape",
        "3",
        "8",
        "8",
        "--arch",
        "cnn",
        "--data.augment",
        "crop_flip",
        "--epochs",
        "2",
    ]
    outputs = tmp_path / "outputs"
    assert_resumes_like_a_straight_run(train, outputs, argv, 12, signal_at_step, monkeypatch)


def test_augmenting_vector_inputs_is_refused(train, capsys):
    assert train(*TINY, "--data.input-shape", "64", "--data.augment", "crop") == 2
    assert "--data.augment crop needs image inputs" in capsys.readouterr().err


def test_channels_last_training_runs(train, tmp_path):
    argv = [
        *TINY,
        "--data.input-shape",
        "3",
        "8",
        "8",
        "--arch",
        "resnet18",
        "--channels-last",
        "--epochs",
        "1",
        "--run-name",
        "cl",
    ]
    assert train(*argv) == 0
    assert (tmp_path / "outputs" / "cl" / "model_best.pth.tar").exists()


def test_the_loop_reads_the_device_once_per_logging_interval(train, monkeypatch):
    """No .item() or .tolist() per step: with 9 steps an epoch and --log-every 5, the host
    reads device values at the interval ends, the epoch ends and the evaluations only."""
    reads = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, original=original, name=name):
            reads.append(name)
            return original(self)

        monkeypatch.setattr(torch.Tensor, name, counted)
    assert train(*TINY, "--epochs", "2", "--log-every", "5") == 0
    monkeypatch.undo()
    # Steps 5, 10 and 15 end an interval; 2 epoch ends; 2 evaluations. Nothing per step.
    assert len(reads) == 3 + 2 + 2, reads
