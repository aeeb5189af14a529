"""Datasets: each registered config loads its splits as tensors, decoded once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from toolbox.component import Component, free_on_resume
from toolbox.registry import Registry

if TYPE_CHECKING:
    import torch

Task = Literal["classification", "regression"]

SEED_LIMIT = 2**63
"""Seeds of a component's own generators lie in [0, SEED_LIMIT): torch.Generator.manual_seed
overflows past 2**64, and a split may seed a second generator with split_seed + 1."""


def available_memory() -> int | None:
    """Bytes of memory a new allocation can have now, read without torch: Linux's
    MemAvailable (free memory plus the cache it can drop), else the free pages POSIX reports;
    None where neither is known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # given in kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # a name this system does not define
        return None


@dataclass(frozen=True)
class DatasetInfo:
    """What models, criteria and metrics need to know about the data, without the data."""

    task: Task
    input_shape: tuple[int, ...]
    """Shape of one input, e.g. (C, H, W) for images."""
    num_outputs: int
    """Number of classes, or of regression targets."""
    mean: tuple[float, ...] = (0.0,)
    """Per-channel mean of the stored inputs (in their stored units), for normalisation."""
    std: tuple[float, ...] = (1.0,)
    """Per-channel standard deviation of the stored inputs."""
    class_names: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None
    """Lowest and highest value a stored input can take (0 and 255 for 8-bit pixels), where
    the inputs are bounded; generative models clip their samples to it."""


@dataclass
class DatasetSplits:
    """The three splits as dicts of equally long tensors (``input``, ``target``), or as
    streamed splits (toolbox.data.streaming.StreamedSplit: files decoded per sample)."""

    info: DatasetInfo
    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    sources: dict[str, list[str]] = field(default_factory=dict)
    """Per split, where each of its samples came from, in the split's order (a file path
    relative to the dataset's root, a table's row number): test.py's predictions name them.
    Splits without an entry are named by their position alone."""
    source_column: str = "path"
    """The predictions column ``sources`` fill, e.g. ``path`` or ``row``."""

    def split(self, name: str) -> dict[str, torch.Tensor]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def count(self, name: str) -> int:
        """The samples in split ``name``."""
        split = self.split(name)
        return len(split["target"]) if isinstance(split, dict) else len(split)

    def first_inputs(self, count: int) -> torch.Tensor:
        """The first ``count`` training inputs as stored (decoded, for a streamed split)."""
        if isinstance(self.train, dict):
            return self.train["input"][:count]
        return self.train.decoded(range(min(count, len(self.train))))


@dataclass(frozen=True)
class DatasetConfig(Component):
    option_prefix = "--data."
    options_on_resume = "fixed"  # which samples a run sees; where and how they are read is free

    val_fraction: float = 0.1
    """Fraction of the training data held out for validation, in [0, 1)."""
    split_seed: int = 0
    """Seed of the fixed permutation that splits off validation (and test) data."""
    loader: Literal["memory", "dataloader", "stream"] = free_on_resume("memory")
    """memory: batches sliced from tensors on the device; dataloader: the same tensors served
    by --num-workers workers; stream (--dataset folder): each file decoded and transformed
    when a batch needs it, in --num-workers workers, for data larger than memory."""
    placement: Literal["auto", "device", "pinned"] = free_on_resume("auto")
    """Where memory loading keeps the data: device, or pinned host memory (auto: device if it
    fits in half the free device memory)."""
    augment: Literal["none", "crop", "crop_flip"] = "none"
    """Training augmentation of image batches on the device: random crop (4 px padding), flip
    (streamed: of each image, on the CPU)."""

    streams: ClassVar[bool] = False
    """Whether build() can return streamed splits (files decoded per sample)."""

    @property
    def task(self) -> Task:
        """Known before loading, so criteria and metrics can be checked against it."""
        return "classification"

    def problems(self) -> list[str]:
        found = []
        if not 0.0 <= self.val_fraction < 1.0:
            found.append(
                f"--data.val-fraction is {self.val_fraction}; it must be in [0, 1) "
                "(e.g. 0.1 holds out 10% of the training data for validation)."
            )
        if self.loader == "stream" and not self.streams:
            found.append(
                f"--data.loader stream decodes files per sample, which {self.registered_name!r} "
                "does not (its samples are decoded once into memory); use --data.loader "
                "memory or dataloader, or --dataset folder for images of your own."
            )
        return found + self.not_seed("split_seed")

    def not_seed(self, *field_names: str) -> list[str]:
        """Problems with fields that seed one of the dataset's generators."""
        return [
            f"{self.option(name)} is {getattr(self, name)}; give a seed in [0, 2**63), e.g. 0."
            for name in field_names
            if not 0 <= getattr(self, name) < SEED_LIMIT
        ]

    def memory_problems(
        self, sizes: str, fixed_bytes: int, sample_bytes: int, samples: int
    ) -> list[str]:
        """A problem if build() would allocate more than the memory available now, told
        before it allocates: the allocator's own refusal is a traceback, and the kernel's
        OOM killer ends the process without a word. ``sizes`` names the options and values
        that set the size: ``samples`` of ``sample_bytes`` each, plus ``fixed_bytes``."""
        available = available_memory()
        needed = fixed_bytes + sample_bytes * samples
        if available is None or needed <= available:
            return []
        fit = max(available - fixed_bytes, 0) // sample_bytes
        room = (
            f"at most {fit:,} samples of this size fit (--data.num-train plus --data.num-test)"
            if fit
            else "not even one sample of this size fits"
        )
        return [
            f"{sizes} make a dataset of at least {needed / 1e9:,.1f} GB, more than the "
            f"{available / 1e9:,.1f} GB of memory available on this machine; lower them: {room}."
        ]

    def build(self) -> DatasetSplits:
        raise NotImplementedError


@dataclass(frozen=True)
class FileDatasetConfig(DatasetConfig):
    """A dataset read from files under ``root``, fetched by torchvision's download code."""

    root: str = free_on_resume("data")
    """Directory that holds the dataset's folder (created on download)."""
    download: bool = free_on_resume(True)
    """Download the files when they are missing (needs network access)."""
    cache: bool = free_on_resume(True)
    """Keep the decoded tensors in a .pt beside the files (~/.cache/toolbox if read-only)."""


@dataclass(frozen=True)
class HeldOutDatasetConfig(DatasetConfig):
    """A dataset of the user's own files, whose test split (where the files bring none) and
    validation split are held out of its samples: test by --data.split-seed, then
    validation out of the rest by the next seed."""

    test_fraction: float = 0.1
    """Fraction of the samples held out as the test split, in (0, 1), where the data has no
    test split of its own; --data.val-fraction is then held out of the rest."""

    def problems(self) -> list[str]:
        found = super().problems()
        if not 0.0 < self.test_fraction < 1.0:
            found.append(
                f"{self.option('test_fraction')} is {self.test_fraction}; it must be in (0, 1), "
                "e.g. 0.1."
            )
        return found

    def hold_out_test(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``indices`` split into (kept, test), each in ascending order."""
        from toolbox.data.splits import hold_out_indices

        kept, test = hold_out_indices(len(indices), self.test_fraction, self.split_seed)
        return indices[kept], indices[test]

    def hold_out_val(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``indices`` split into (train, val), each in ascending order."""
        from toolbox.data.splits import hold_out_indices

        kept, val = hold_out_indices(len(indices), self.val_fraction, self.split_seed + 1)
        return indices[kept], indices[val]

    def three_splits(self, count: int) -> dict[str, torch.Tensor]:
        """The indices of the train, val and test samples of ``count``."""
        import torch

        rest, test = self.hold_out_test(torch.arange(count))
        train, val = self.hold_out_val(rest)
        return {"train": train, "val": val, "test": test}


DATASETS: Registry[DatasetConfig] = Registry("dataset", __name__, DatasetConfig, "--dataset")
register_dataset = DATASETS.register
