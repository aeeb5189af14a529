from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from toolbox.datasets import DatasetInfo, DatasetSplits, FileDatasetConfig, register_dataset
from toolbox.errors import UserError


@dataclass(frozen=True)
class _MNISTFormat(FileDatasetConfig):
    """28x28 grey images in IDX files under <root>/<folder>/raw, as torchvision keeps them."""

    torchvision_class: ClassVar[str]
    # Per-pixel mean and standard deviation of the training images, in 0..255 units.
    pixel_mean: ClassVar[float]
    pixel_std: ClassVar[float]

    def build(self) -> DatasetSplits:
        import torchvision

        from toolbox.data.cache import image_layout, load_or_decode
        from toolbox.data.files import fetch_idx_files, read_idx
        from toolbox.data.splits import hold_out

        source = getattr(torchvision.datasets, self.torchvision_class)
        folder = Path(self.root) / self.torchvision_class / "raw"
        files = fetch_idx_files(
            self.registered_name,
            Path(self.root),
            folder,
            source.mirrors,
            source.resources,
            self.download,
        )

        def split(prefix: str) -> dict:
            image_file = files[f"{prefix}-images-idx3-ubyte"]
            label_file = files[f"{prefix}-labels-idx1-ubyte"]
            images = read_idx(image_file)
            targets = read_idx(label_file)
            if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
                raise UserError(
                    f"{image_file} holds images of shape {tuple(images.shape)}, not "
                    f"(N, 28, 28); replace it with the original file."
                )
            if targets.ndim != 1 or len(targets) != len(images):
                raise UserError(
                    f"{label_file} holds {tuple(targets.shape)} labels for the "
                    f"{len(images):,} images of {image_file}; the two files do not belong "
                    "together: replace them with the original files."
                )
            return {"input": images.unsqueeze(1), "target": targets.long()}  # (N, 1, 28, 28)

        def decode() -> dict:
            return {"train": split("train"), "test": split("t10k")}

        if self.cache:
            decoded = load_or_decode(
                self.registered_name,
                folder,
                list(files.values()),
                decode,
                expected=image_layout((1, 28, 28)),
            )
        else:
            decoded = decode()
        train, val = hold_out(decoded["train"], self.val_fraction, self.split_seed)
        info = DatasetInfo(
            task="classification",
            input_shape=(1, 28, 28),
            num_outputs=10,
            mean=(self.pixel_mean,),
            std=(self.pixel_std,),
            class_names=tuple(source.classes),
            value_range=(0.0, 255.0),
        )
        return DatasetSplits(info, train, val, decoded["test"])


@register_dataset("mnist")
@dataclass(frozen=True)
class MNIST(_MNISTFormat):
    """MNIST handwritten digits (60,000 train and 10,000 test images, 28x28, 10 classes)."""

    torchvision_class = "MNIST"
    pixel_mean = 0.1307 * 255
    pixel_std = 0.3081 * 255


@register_dataset("fashion_mnist")
@dataclass(frozen=True)
class FashionMNIST(_MNISTFormat):
    """Fashion-MNIST clothing images (60,000 train and 10,000 test, 28x28, 10 classes)."""

    torchvision_class = "FashionMNIST"
    pixel_mean = 0.2860 * 255
    pixel_std = 0.3530 * 255
