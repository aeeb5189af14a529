"""Datasets: each registered config loads its splits as tensors, decoded once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from toolbox.component import Component
from toolbox.registry import Registry

if TYPE_CHECKING:
    import torch

Task = Literal["classification", "regression"]


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
    """The three splits as dicts of equally long tensors (``input``, ``target``)."""

    info: DatasetInfo
    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]

    def split(self, name: str) -> dict[str, torch.Tensor]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


@dataclass(frozen=True)
class DatasetConfig(Component):
    option_prefix = "--data."

    val_fraction: float = 0.1
    """Fraction of the training data held out for validation, in [0, 1)."""
    split_seed: int = 0
    """Seed of the fixed permutation that splits off validation (and test) data."""
    loader: Literal["memory", "dataloader"] = "memory"
    """memory: batches sliced from tensors on the device; dataloader: --num-workers workers."""
    placement: Literal["auto", "device", "pinned"] = "auto"
    """Where memory loading keeps the data: device, or pinned host memory (auto: device if it
    fits in half the free device memory)."""
    augment: Literal["none", "crop", "crop_flip"] = "none"
    """Training augmentation of image batches on the device: random crop (4 px padding), flip."""

    @property
    def task(self) -> Task:
        """Known before loading, so criteria and metrics can be checked against it."""
        return "classification"

    def problems(self) -> list[str]:
        if not 0.0 <= self.val_fraction < 1.0:
            return [
                f"--data.val-fraction is {self.val_fraction}; it must be in [0, 1) "
                "(e.g. 0.1 holds out 10% of the training data for validation)."
            ]
        return []

    def build(self) -> DatasetSplits:
        raise NotImplementedError


@dataclass(frozen=True)
class FileDatasetConfig(DatasetConfig):
    """A dataset read from files under ``root``, fetched by torchvision's download code."""

    root: str = "data"
    """Directory that holds the dataset's folder (created on download)."""
    download: bool = True
    """Download the files when they are missing (needs network access)."""
    cache: bool = True
    """Keep the decoded tensors in a .pt beside the files (~/.cache/toolbox if read-only)."""


DATASETS: Registry[DatasetConfig] = Registry("dataset", __name__, DatasetConfig, "--dataset")
register_dataset = DATASETS.register
