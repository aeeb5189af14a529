"""Loaders that yield dict batches ({"input": ..., "target": ...}) from in-memory tensors,
or from files decoded per sample (streamed splits)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from toolbox.data.streaming import StreamDataset, StreamedSplit
from toolbox.errors import UserError

Batch = dict[str, torch.Tensor]


class _EpochLoader:
    """Plans each epoch's batches and knows how far into the epoch it is.

    An epoch's order is one permutation drawn from a seeded generator of the loader's own.
    The state holds the generator as it was when the current epoch's permutation was drawn
    and the number of batches already handed out, so a checkpoint taken mid-epoch resumes
    at exactly the next batch and every later epoch draws what it would have drawn.

    Under torchrun every rank draws the same permutation and takes every ``world_size``-th
    position of it from its ``rank`` on: batch i of all ranks together is positions
    [i * B * W, (i + 1) * B * W) of the permutation, exactly the batch a single process
    with batch size B * W would see. Training drops the remainder (fewer than B * W
    samples, different ones each epoch); evaluation covers every sample exactly once.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        generator_device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator(device=generator_device).manual_seed(seed)
        self.next_batch = 0
        """Batches of the current epoch handed out so far."""
        self.batch_limit = 0
        """Batches per epoch at most (0: all): an epoch ends after them, its order unchanged
        (--limit-train-batches, --limit-val-batches)."""
        self._epoch_start_state = self.generator.get_state()
        self._resume_at = 0
        self._order: torch.Tensor | None = None

    def __len__(self) -> int:
        if self.drop_last:
            batches = self.num_samples // self.world_size // self.batch_size
        else:
            rank_samples = len(range(self.rank, self.num_samples, self.world_size))
            batches = math.ceil(rank_samples / self.batch_size)
        return min(batches, self.batch_limit) if self.batch_limit else batches

    def _begin_epoch(self) -> int:
        """Draws the epoch's order; returns the index of the first batch to hand out."""
        start, self._resume_at = self._resume_at, 0
        if start == 0:
            self._epoch_start_state = self.generator.get_state()
        self._order = None
        if self.shuffle:
            self._order = torch.randperm(
                self.num_samples, device=self.generator.device, generator=self.generator
            )
        self.next_batch = start
        return start

    def _index(self, batch_idx: int) -> torch.Tensor | slice:
        stride = self.world_size
        start = self.rank + batch_idx * self.batch_size * stride
        positions = slice(start, min(start + self.batch_size * stride, self.num_samples), stride)
        return positions if self._order is None else self._order[positions]

    @property
    def resume_batch(self) -> int:
        """The batch the next epoch starts at: 0, or the position a checkpoint restored."""
        return self._resume_at

    @property
    def samples_per_batch(self) -> int:
        """Samples one batch of every rank together holds."""
        return self.batch_size * self.world_size

    def state_dict(self) -> dict:
        position = self.next_batch if 0 < self.next_batch < len(self) else 0
        return {
            "generator": self._epoch_start_state if position else self.generator.get_state(),
            "next_batch": position,
            "samples_per_batch": self.samples_per_batch,
        }

    def close(self) -> None:
        """Release what the loader holds beyond its tensors (nothing, in memory)."""

    def load_state_dict(self, state: dict) -> None:
        """Restores the position; saved with another batch size or number of ranks, the epoch
        goes on from the first sample not yet seen, rounded down to a whole batch.

        Mid-epoch the saved generator is the epoch's start state, and it stays the start
        state: ``_begin_epoch`` records it only for epochs begun from batch 0, so without
        this a checkpoint taken later in the resumed epoch (a second stop, a periodic save)
        would hold the seed's state and replay another permutation."""
        self.generator.set_state(state["generator"])
        self._epoch_start_state = self.generator.get_state()
        saved_batch = state.get("samples_per_batch", self.samples_per_batch)
        self.next_batch = self._resume_at = (
            state["next_batch"] * saved_batch // self.samples_per_batch
        )


class InMemoryLoader(_EpochLoader):
    """Slices batches out of tensors that live on the training device, or in pinned host
    memory from which each batch is copied without blocking.

    The permutation is drawn where the tensors are, so on the device an epoch costs a
    ``randperm`` and one gather per tensor per batch, and nothing crosses to the host.
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
        pinned: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.device = device
        self.pinned = pinned and device.type == "cuda"
        if self.pinned:
            self.tensors = {key: value.cpu().pin_memory() for key, value in tensors.items()}
        else:
            self.tensors = {key: value.to(device) for key, value in tensors.items()}
        self.on_device = not self.pinned  # batches need no copy
        num_samples = len(next(iter(self.tensors.values())))
        super().__init__(
            num_samples,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            generator_device=torch.device("cpu") if self.pinned else device,
            rank=rank,
            world_size=world_size,
        )

    def __iter__(self) -> Iterator[Batch]:
        for batch_idx in range(self._begin_epoch(), len(self)):
            index = self._index(batch_idx)
            self.next_batch = batch_idx + 1
            if self.pinned:
                # The gather lands in pageable memory; pinning it lets the copy run async.
                yield {
                    key: value[index].pin_memory().to(self.device, non_blocking=True)
                    for key, value in self.tensors.items()
                }
            else:
                yield {key: value[index] for key, value in self.tensors.items()}


class _TensorDictDataset(torch.utils.data.Dataset):
    def __init__(self, tensors: Batch) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> Batch:
        return {key: value[index] for key, value in self.tensors.items()}


class _PlannedBatches(torch.utils.data.Sampler):
    """The DataLoader's batch sampler: the owning loader's plan for the current epoch."""

    def __init__(self, owner: WorkerLoader) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner)

    def __iter__(self) -> Iterator[list[int]]:
        owner = self.owner
        for batch_idx in range(owner.first_batch, len(owner)):
            index = owner._index(batch_idx)
            if isinstance(index, slice):
                yield owner.items(range(index.start, index.stop, index.step))
            else:
                yield owner.items(index.tolist())


class WorkerLoader(_EpochLoader):
    """A torch DataLoader over a dataset of dict samples (the same tensors, for data served
    by worker processes), in the planned order.

    Batches stay in (pinned, on CUDA) host memory; the trainer copies them to the device.
    Workers prefetch ahead, so the position counts batches handed to the trainer.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            len(dataset),
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            generator_device=torch.device("cpu"),
            rank=rank,
            world_size=world_size,
        )
        self.first_batch = 0
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=_PlannedBatches(self),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            # Without a generator of its own, each new iterator draws its workers' base seed
            # from the global RNG, which shifts dropout masks after a mid-epoch resume.
            generator=torch.Generator().manual_seed(seed),
        )

    def items(self, positions) -> list:
        """What the dataset is asked for to make the batch of samples at ``positions``."""
        return list(positions)

    def close(self) -> None:
        """End the worker processes now. Persistent workers otherwise live as long as the
        DataLoader's iterator, which sits in a reference cycle with the trainer: a later
        ``gc.collect()`` then stalls ~15 s waiting for them. Dropping the one reference
        lets the iterator's own shutdown run at once; the next epoch would start new ones."""
        self.loader._iterator = None

    def __iter__(self) -> Iterator[Batch]:
        self.first_batch = self._begin_epoch()
        for batch_idx, batch in enumerate(self.loader, self.first_batch):
            self.next_batch = batch_idx + 1
            yield batch


class StreamLoader(WorkerLoader):
    """A WorkerLoader over a streamed split: each sample is decoded (and, when training,
    transformed) where the DataLoader serves it, so only the batches in flight are in memory.

    Each epoch's samples' transforms are seeded from a digest of the generator's state at
    the epoch's start, which a checkpoint restores: a resumed epoch transforms every sample
    as the uninterrupted run did. Drawing nothing from the generator keeps the order of
    every epoch that of the memory loaders."""

    def __init__(self, split: StreamedSplit, batch_size: int, **options) -> None:
        self.split = split
        self.epoch_seed = 0
        super().__init__(StreamDataset(split), batch_size, **options)

    def _begin_epoch(self) -> int:
        start = super()._begin_epoch()
        digest = hashlib.blake2b(self._epoch_start_state.numpy().tobytes(), digest_size=8)
        self.epoch_seed = int.from_bytes(digest.digest()) >> 1  # below 2**63
        return start

    def items(self, positions) -> list:
        return [(position, self.epoch_seed) for position in positions]

    def __iter__(self) -> Iterator[Batch]:
        for batch in super().__iter__():
            positions, problems = batch.pop("position"), batch.pop("problem")
            bad = [
                (p, problem)
                for p, problem in zip(positions.tolist(), problems, strict=True)
                if problem
            ]
            if bad:
                self.close()
                position, problem = bad[0]
                raise UserError(
                    f"{self.split.paths[position]} {problem}; with --data.loader stream each "
                    "file is read when a batch needs it, so replace or remove it (or give "
                    "--data.image-size N to make every image N x N), or use --data.loader "
                    "memory, which decodes every file first and skips unreadable ones."
                )
            yield batch


def fits_on_device(tensors: Batch, device: torch.device) -> bool:
    """Whether ``tensors`` take at most half the device's free memory (always, off CUDA)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(value.nbytes for value in tensors.values()) <= free // 2


def make_loader(
    split: Batch | StreamedSplit,
    batch_size: int,
    *,
    kind: str,
    device: torch.device,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    placement: str = "device",
    rank: int = 0,
    world_size: int = 1,
) -> InMemoryLoader | WorkerLoader:
    """The loader for one split (this rank's share of it): shuffled, dropping the last
    partial batch, when training. A streamed split is always streamed, whatever ``kind``."""
    common = {
        "device": device,
        "shuffle": train,
        "drop_last": train,
        "seed": seed,
        "rank": rank,
        "world_size": world_size,
    }
    if isinstance(split, StreamedSplit):
        return StreamLoader(split, batch_size, num_workers=num_workers, **common)
    if kind == "memory":
        pinned = placement == "pinned" or (
            placement == "auto" and not fits_on_device(split, device)
        )
        return InMemoryLoader(split, batch_size, pinned=pinned, **common)
    return WorkerLoader(_TensorDictDataset(split), batch_size, num_workers=num_workers, **common)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class Normalizer:
    """Turns stored inputs (uint8 pixels or floats) into normalised float tensors, batched
    on the device: ``(x - mean) / std`` with per-channel statistics in stored units; image
    batches come out channels-last when asked (faster convolutions on recent GPUs)."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        ndim: int,
        device: torch.device,
        channels_last: bool = False,
    ) -> None:
        shape = (1, len(mean)) + (1,) * (ndim - 1) if len(mean) > 1 else (1,)
        self.mean = torch.tensor(mean, device=device).reshape(shape)
        self.inv_std = 1.0 / torch.tensor(std, device=device).reshape(shape)
        self.channels_last = channels_last and ndim == 3

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        normalized = (inputs.float() - self.mean) * self.inv_std
        if self.channels_last:
            return normalized.contiguous(memory_format=torch.channels_last)
        return normalized
