"""Images of your own in the ImageFolder layout: one sub-folder per class."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from toolbox.component import free_on_resume
from toolbox.datasets import DatasetInfo, DatasetSplits, HeldOutDatasetConfig, register_dataset
from toolbox.errors import UserError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
SPLIT_FOLDERS = ("train", "val", "test")
SHOWN = 5
"""How many file names a message lists before it gives the count of the rest."""
PROGRESS_FROM = 1000
"""The fewest images whose decoding shows a progress bar."""
STATISTICS_SAMPLE = 1000
"""The most training images a streamed folder decodes up front for its statistics."""


def _listed(names: list[str], limit: int = SHOWN) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _visible_dirs(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` a user means (hidden ones such as .git left out), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path.name[0] != "."


@dataclass(frozen=True)
class _File:
    path: Path
    split: str
    """The split folder it lies in (train, val, test), or "" in a folder without them."""
    label: int


@register_dataset("folder")
@dataclass(frozen=True)
class Folder(HeldOutDatasetConfig):
    """Images of your own (PNG, JPEG, BMP, WebP) in one sub-folder per class under
    --data.root, the classes named by their folders in sorted order. Where the root holds
    train/ (and test/, val/) folders, each with the class folders, those are the splits
    (a missing val/ or test/ is held out of train/); otherwise --data.test-fraction and
    --data.val-fraction are held out of all images. Decoded once into uint8 tensors
    (cached beside the images); test.py's predictions name each image by its path."""

    root: str = free_on_resume("")
    """The folder of class folders (or of train/, val/, test/ folders of class folders)."""
    image_size: int = 0
    """Resize each image's shorter side to this many pixels and centre-crop it square
    (0: keep the images' own size, which must then be the same for all)."""
    channels: Literal["auto", "1", "3"] = "auto"
    """Channels of the stored images: 1 (grey) or 3 (RGB); auto: 1 if every image is grey
    (with --data.loader stream: every image of the statistics' sample)."""
    bad_files: Literal["skip", "error"] = "skip"
    """Files that cannot be read as images: skip: leave them out (their names are logged);
    error: stop with a message naming them. Streamed, a file is read only when a batch needs
    it: the run then stops there, naming it."""
    cache: bool = free_on_resume(True)
    """Keep the decoded tensors in a .pt beside the images (~/.cache/toolbox if read-only)."""
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = "none"
    """With --data.loader stream: torchvision's RandAugment or TrivialAugmentWide on each
    training image (after --data.augment's crop and flip)."""
    random_erasing: float = 0.0
    """With --data.loader stream: the probability that torchvision's RandomErasing blanks a
    random rectangle of each training image (0: never)."""

    streams = True

    def problems(self) -> list[str]:
        found = super().problems()
        if self.image_size < 0:
            found.append(
                f"{self.option('image_size')} is {self.image_size}; give a size in pixels, "
                "e.g. 64, or 0 to keep the images' own size."
            )
        if not 0.0 <= self.random_erasing <= 1.0:
            found.append(
                f"{self.option('random_erasing')} is {self.random_erasing}; give a "
                "probability in [0, 1], e.g. 0.25."
            )
        per_sample = [
            self.option(name)
            for name, off in (("auto_augment", "none"), ("random_erasing", 0.0))
            if getattr(self, name) != off
        ]
        if per_sample and self.loader != "stream":
            found.append(
                f"{' and '.join(per_sample)} transform each image on its own on the CPU, "
                f"which only --data.loader stream does (it is {self.loader}); add "
                "--data.loader stream, or drop them."
            )
        return found

    @property
    def _root(self) -> Path:
        return Path(self.root).expanduser()

    def _scan(self) -> tuple[list[str], list[_File], list[Path]]:
        """The class names, the image files (sorted, so every machine numbers them alike),
        and the class folders they lie in."""
        if not self.root:  # told here: a component's defaults have no problems
            raise UserError(
                f"{self.option('root')} is not given; name the folder holding one sub-folder "
                f"of images per class, e.g. {self.option('root')} ~/birds."
            )
        root = self._root
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise UserError(
                f"{self.option('root')} {self.root} {what}; give the folder that holds one "
                "sub-folder of images per class."
            )
        dirs = _visible_dirs(root)
        if any(d.name == "train" for d in dirs):
            others = [d.name for d in dirs if d.name not in SPLIT_FOLDERS]
            if others:
                raise UserError(
                    f"{self.option('root')} {self.root} holds a train/ folder and also the "
                    f"folders {_listed(others)}; put every class folder inside train/ (and "
                    "val/, test/), or rename train/ if it is a class."
                )
            parents = {d.name: d for d in dirs}
        else:
            parents = {"": root}
        classes = sorted(d.name for d in _visible_dirs(parents.get("train", root)))
        files, class_dirs, empty = [], [], []
        for split, parent in parents.items():
            shown = parent.relative_to(root).as_posix() + "/" if split else ""
            class_folders = _visible_dirs(parent)
            if not class_folders:
                loose = [p.name for p in parent.iterdir() if _is_image(p)]
                what = f"{len(loose)} images but" if loose else "nothing:"
                raise UserError(
                    f"{self.option('root')} {self.root}: {shown or 'the folder'} holds {what} "
                    "no class sub-folders; put each class's images in a sub-folder named after "
                    f"the class, e.g. {self.root}/{shown}cat/1.png."
                )
            unknown = [d.name for d in class_folders if d.name not in classes]
            if unknown:
                raise UserError(
                    f"{self.option('root')} {self.root}: {shown} has the class folders "
                    f"{_listed(unknown)}, which train/ lacks; add them to train/ or remove them."
                )
            for folder in class_folders:
                images = sorted(p for p in folder.rglob("*") if _is_image(p))
                if not images:
                    empty.append(folder.relative_to(root).as_posix())
                class_dirs.append(folder)
                label = classes.index(folder.name)
                files += [_File(path, split, label) for path in images]
        if not files:
            raise UserError(
                f"{self.option('root')} {self.root} has no images: its class folders hold no "
                f"file ending in {', '.join(IMAGE_SUFFIXES)}."
            )
        if empty:
            raise UserError(
                f"{self.option('root')} {self.root}: the class folders {_listed(empty)} hold "
                f"no image (a file ending in {', '.join(IMAGE_SUFFIXES)}); add images to "
                "them or remove them."
            )
        return classes, files, class_dirs

    def _unreadable(self, bad: list[tuple[str, str]], total: int) -> None:
        """Skip (and log) or refuse the files that are not images, with their reasons."""
        if not bad:
            return
        names = [name for name, _ in bad]
        if self.bad_files == "error" or self.loader == "stream":
            reasons = [f"{name} ({reason})" if reason else name for name, reason in bad]
            fix = (
                "--data.loader memory, which can leave them out"
                if self.loader == "stream"  # its batches are planned with every file
                else f"pass {self.option('bad_files')} skip to leave them out"
            )
            raise UserError(
                f"{len(bad)} of the {total} files under {self.option('root')} {self.root} "
                f"cannot be read as images: {_listed(reasons)}; replace or remove them, or "
                f"{fix}."
            )
        logging.getLogger("toolbox").warning(
            "skipped %d unreadable files under %s: %s", len(bad), self.root, _listed(names)
        )

    def _headers(self, files: list[_File], positions) -> tuple[dict, list]:
        """Each readable file's (mode, size) by position, read from its header only, and
        the unreadable files with their reasons."""
        from PIL import Image

        headers, bad = {}, []
        for position in positions:
            try:
                with Image.open(files[position].path) as image:
                    headers[position] = (image.mode, image.size)
            except Exception as error:  # noqa: BLE001 - PIL raises many kinds for bad files
                bad.append((self._shown(files[position]), type(error).__name__))
        return headers, bad

    def _shown(self, file: _File) -> str:
        return file.path.relative_to(self._root).as_posix()

    def _channels(self, headers: dict, files: list[_File]) -> int:
        """The stored images' channels; their sizes checked to agree without --data.image-size."""
        if not self.image_size:
            sizes: dict[tuple[int, int], list[str]] = {}
            for position, (_, size) in headers.items():
                sizes.setdefault(size, []).append(self._shown(files[position]))
            if len(sizes) > 1:
                counted = sorted(sizes.items(), key=lambda item: -len(item[1]))
                described = [
                    f"{w}x{h} ({len(names)}, e.g. {names[0]})" for (w, h), names in counted
                ]
                raise UserError(
                    f"the images under {self.option('root')} {self.root} differ in size: "
                    f"{_listed(described)}; pass {self.option('image_size')} N (e.g. 64) to "
                    "resize each one's shorter side to N pixels and centre-crop it N x N."
                )
        if self.channels != "auto":
            return int(self.channels)
        return 1 if all(mode in GREY_MODES for mode, _ in headers.values()) else 3

    def _decode(self, files: list[_File], positions=None) -> dict:
        """The readable images at ``positions`` (all, by default) as {"all": {input,
        target, index}}, index being each image's position in ``files``."""
        import torch
        from rich.console import Console
        from rich.progress import track

        from toolbox.data.images import read_image

        headers, bad = self._headers(files, range(len(files)) if positions is None else positions)
        channels = self._channels(headers, files)
        inputs, targets, kept = [], [], []
        progress = track(
            list(headers),
            description=f"decoding {len(headers):,} images",
            console=Console(stderr=True),
            transient=True,
            disable=len(headers) < PROGRESS_FROM,
        )
        for position in progress:
            file = files[position]
            try:
                inputs.append(read_image(file.path, channels, self.image_size))
            except Exception as error:  # noqa: BLE001 - truncated data shows only now
                bad.append((self._shown(file), type(error).__name__))
                continue
            targets.append(file.label)
            kept.append(position)
        self._unreadable(sorted(bad), len(headers) + len(bad))
        if not inputs:
            raise UserError(
                f"none of the images under {self.option('root')} {self.root} is readable."
            )
        return {
            "all": {
                "input": torch.stack(inputs),
                "target": torch.tensor(targets, dtype=torch.int64),
                "index": torch.tensor(kept, dtype=torch.int64),
            }
        }

    def _parts(self, files: list[_File], index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Positions into the decoded tensors of each split's samples."""
        import torch

        split_of = [files[i].split for i in index.tolist()]
        present = {file.split for file in files}

        def pool(name: str) -> torch.Tensor:
            return torch.tensor([i for i, s in enumerate(split_of) if s == name], dtype=torch.int64)

        rest, parts = pool("train" if "train" in present else ""), {}
        if "test" in present:
            parts["test"] = pool("test")
        else:
            rest, parts["test"] = self.hold_out_test(rest)
        if "val" in present:
            parts["val"] = pool("val")
        else:
            rest, parts["val"] = self.hold_out_val(rest)
        parts["train"] = rest
        if len(rest) == 0:
            raise UserError(
                f"{self.option('root')} {self.root} has {len(index)} readable images: none "
                f"is left for training after {self.option('test_fraction')} and "
                f"{self.option('val_fraction')}; add images or lower the fractions."
            )
        return parts

    def build(self) -> DatasetSplits:
        from toolbox.data.cache import load_or_decode
        from toolbox.data.images import channel_statistics

        classes, files, class_dirs = self._scan()
        if self.loader == "stream":
            return self._streamed(classes, files)
        decoded_now = []

        def decode() -> dict:
            decoded_now.append(True)
            return self._decode(files)

        if self.cache:
            name = f"{self.registered_name}-{self.image_size or 'own'}-{self.channels}"
            # The class folders too: their names and modification times change when a
            # file is added, removed or moved from one class to another.
            sources = [file.path for file in files] + class_dirs
            decoded = load_or_decode(name, self._root, sources, decode)["all"]
            self._check_cached(decoded, files)
        else:
            decoded = decode()["all"]
        index = decoded["index"]
        skipped = sorted(set(range(len(files))) - set(index.tolist()))
        if skipped and not decoded_now:  # decoded earlier: say again what was left out
            self._unreadable([(self._shown(files[i]), "") for i in skipped], len(files))
        parts = self._parts(files, index)
        splits = {
            name: {k: decoded[k][part] for k in ("input", "target")} for name, part in parts.items()
        }
        train = splits["train"]["input"]
        info = self._info(classes, tuple(train.shape[1:]), *channel_statistics(train))
        sources = {
            name: [self._shown(files[i]) for i in index[part].tolist()]
            for name, part in parts.items()
        }
        return DatasetSplits(info, **splits, sources=sources, source_column="path")

    def _info(self, classes: list[str], shape: tuple[int, ...], mean, std) -> DatasetInfo:
        return DatasetInfo(
            task="classification",
            input_shape=shape,
            num_outputs=len(classes),
            mean=mean,
            std=std,
            class_names=tuple(classes),
            value_range=(0.0, 255.0),
        )

    def _streamed(self, classes: list[str], files: list[_File]) -> DatasetSplits:
        """Splits of file paths, decoded per sample when a batch needs them. The inputs'
        shape, channels and normalisation statistics come from up to STATISTICS_SAMPLE
        training images spread evenly over the split (all of them, in smaller folders)."""
        import functools

        import torch

        from toolbox.data.images import channel_statistics, read_image
        from toolbox.data.streaming import StreamedSplit, sample_transform

        parts = self._parts(files, torch.arange(len(files)))
        train = parts["train"]
        spread = torch.linspace(0, len(train) - 1, min(len(train), STATISTICS_SAMPLE))
        sample = self._decode(files, train[spread.round().long()].tolist())["all"]["input"]
        shape = tuple(sample.shape[1:])
        decode = functools.partial(read_image, channels=shape[0], size=self.image_size)
        transform = sample_transform(
            shape[1:], self.augment, self.auto_augment, self.random_erasing
        )
        splits = {
            name: StreamedSplit(
                paths=[str(files[i].path) for i in part.tolist()],
                targets=torch.tensor([files[i].label for i in part.tolist()], dtype=torch.int64),
                decode=decode,
                shape=shape,
                transform=transform if name == "train" else None,
            )
            for name, part in parts.items()
        }
        sources = {
            name: [self._shown(files[i]) for i in part.tolist()] for name, part in parts.items()
        }
        info = self._info(classes, shape, *channel_statistics(sample))
        return DatasetSplits(info, **splits, sources=sources, source_column="path")

    def _check_cached(self, decoded: dict, files: list[_File]) -> None:
        """Refuse a cache whose indices do not fit the files found (never expected: its
        key covers the files), rather than mislabel samples."""
        index = decoded["index"]
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= len(files)):
            raise UserError(
                f"the decoded-data cache under {self.root} does not match its images; "
                f"delete the toolbox-{self.registered_name}-*.pt files there, or pass "
                "--data.no-cache."
            )
