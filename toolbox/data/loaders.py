"""Loaders that yield dict batches ({"input": ..., "target": ...}) from in-memory tensors."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

Batch = dict[str, torch.Tensor]


class _SeededLoader:
    """Shuffles with a generator of its own, whose state checkpoints save and restore."""

    generator: torch.Generator

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class InMemoryLoader(_SeededLoader):
    """Slices batches out of tensors that live on the training device.

    Each epoch draws one permutation from a seeded generator on that device, so an epoch
    costs a ``randperm`` and one gather per tensor per batch, and nothing crosses to the host.
    """

    def __init__(
        self,
        tensors: Batch,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
    ) -> None:
        self.tensors = {key: value.to(device) for key, value in tensors.items()}
        self.num_samples = len(next(iter(self.tensors.values())))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = None
        if self.shuffle:
            order = torch.randperm(
                self.num_samples, device=self.generator.device, generator=self.generator
            )
        for batch_idx in range(len(self)):
            start = batch_idx * self.batch_size
            stop = min(start + self.batch_size, self.num_samples)
            if order is None:
                yield {key: value[start:stop] for key, value in self.tensors.items()}
            else:
                index = order[start:stop]
                yield {key: value[index] for key, value in self.tensors.items()}


class _TensorDictDataset(torch.utils.data.Dataset):
    def __init__(self, tensors: Batch) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> Batch:
        return {key: value[index] for key, value in self.tensors.items()}


class WorkerLoader(_SeededLoader):
    """A torch DataLoader over the same tensors, for data served by worker processes.

    Batches stay in (pinned, on CUDA) host memory; the trainer copies them to the device.
    """

    def __init__(
        self,
        tensors: Batch,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(
            _TensorDictDataset(tensors),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=self.generator,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)


def make_loader(
    tensors: Batch,
    batch_size: int,
    *,
    kind: str,
    device: torch.device,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
) -> InMemoryLoader | WorkerLoader:
    """The loader for one split: shuffled, dropping the last partial batch, when training."""
    if kind == "memory":
        return InMemoryLoader(
            tensors, batch_size, device=device, shuffle=train, drop_last=train, seed=seed
        )
    return WorkerLoader(
        tensors,
        batch_size,
        device=device,
        shuffle=train,
        drop_last=train,
        seed=seed,
        num_workers=num_workers,
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class Normalizer:
    """Turns stored inputs (uint8 pixels or floats) into normalised float tensors, batched
    on the device: ``(x - mean) / std`` with per-channel statistics in stored units."""

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], ndim: int, device: torch.device
    ) -> None:
        shape = (1, len(mean)) + (1,) * (ndim - 1) if len(mean) > 1 else (1,)
        self.mean = torch.tensor(mean, device=device).reshape(shape)
        self.inv_std = 1.0 / torch.tensor(std, device=device).reshape(shape)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs.float() - self.mean) * self.inv_std
