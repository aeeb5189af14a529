"""Splits whose samples stay in their files until a batch needs them: decoded one at a time
(in DataLoader workers), each with per-sample CPU transforms, for data larger than memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

SEED_LIMIT = 2**63


@dataclass
class StreamedSplit:
    """One split as file paths and labels; ``decode`` turns a path into the stored input
    (e.g. a uint8 (C, H, W) image) and ``transform``, where given, changes it per sample."""

    paths: list[str]
    targets: torch.Tensor
    decode: Callable[[str], torch.Tensor]
    """Picklable (a module-level function or a partial of one): workers receive it."""
    shape: tuple[int, ...]
    """The shape every decoded input has; one of another shape is refused, naming it."""
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Draws from torch's global generator, seeded per sample by the loader."""

    def __len__(self) -> int:
        return len(self.paths)

    def decoded(self, positions: Iterable[int]) -> torch.Tensor:
        """The inputs at ``positions``, decoded and stacked, without the transform."""
        return torch.stack([self.decode(self.paths[i]) for i in positions])


class StreamDataset(torch.utils.data.Dataset):
    """Items are ``(position, epoch_seed)``: the transform of sample i in an epoch is seeded
    by ``epoch_seed + i``, so it is the same whichever worker decodes it and whether the
    epoch ran straight through or resumed midway.

    A file that cannot be decoded (or decodes to another shape) comes back as zeros with its
    problem named, so the batch can still be collated and the loader refuses it by name in
    the training process, not as a worker's traceback."""

    def __init__(self, split: StreamedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        position, epoch_seed = item
        split = self.split
        problem = ""
        try:
            image = split.decode(split.paths[position])
        except Exception as error:  # noqa: BLE001 - a bad file shows only when decoded
            image, problem = None, f"cannot be read as an image ({type(error).__name__})"
        if image is not None and tuple(image.shape) != split.shape:
            image, problem = None, f"decodes to shape {tuple(image.shape)}, not {split.shape}"
        if image is None:
            image = torch.zeros(split.shape, dtype=torch.uint8)
        elif split.transform is not None:
            # Its own stream, without moving the process's: with no workers the transforms
            # run in the training process, whose generator draws the dropout masks.
            # torch.manual_seed would also queue seeds for every accelerator, at a captured
            # traceback each: a millisecond per sample.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed((epoch_seed + position) % SEED_LIMIT)
                image = split.transform(image)
        return {
            "input": image,
            "target": split.targets[position],
            "position": position,
            "problem": problem,
        }


def sample_transform(
    size: tuple[int, int], augment: str, auto_augment: str, random_erasing: float
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The training split's per-sample transforms on uint8 (C, H, W) images, in
    torchvision.transforms.v2: random crop to ``size`` with 4 px zero padding and horizontal
    flip (as --data.augment does on the device for memory loading), RandAugment or
    TrivialAugment, random erasing with probability ``random_erasing``; None when there is
    none."""
    from torchvision.transforms import v2

    steps = []
    if augment in ("crop", "crop_flip"):
        steps.append(v2.RandomCrop(size, padding=4))
    if augment == "crop_flip":
        steps.append(v2.RandomHorizontalFlip())
    if auto_augment == "randaugment":
        steps.append(v2.RandAugment())
    elif auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(steps) if steps else None
