from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from toolbox.datasets import DatasetInfo, DatasetSplits, FileDatasetConfig, register_dataset


@dataclass(frozen=True)
class _CIFARFormat(FileDatasetConfig):
    """32x32 colour images in torchvision's pickled batches under <root>/<base folder>."""

    augment: Literal["none", "crop", "crop_flip"] = "crop_flip"
    """Training augmentation of image batches on the device: random crop (4 px padding), flip."""

    torchvision_class: ClassVar[str]
    label_key: ClassVar[str]
    # Per-channel mean and standard deviation of the training images, in 0..255 units.
    channel_mean: ClassVar[tuple[float, float, float]]
    channel_std: ClassVar[tuple[float, float, float]]

    def build(self) -> DatasetSplits:
        import torchvision
        from torchvision.datasets.utils import download_and_extract_archive

        from toolbox.data.cache import image_layout, load_or_decode
        from toolbox.data.files import missing_files_error, read_cifar_batches, unpickle_cifar
        from toolbox.data.splits import hold_out

        source = getattr(torchvision.datasets, self.torchvision_class)
        folder = Path(self.root) / source.base_folder
        names = [name for name, _ in source.train_list + source.test_list]
        names.append(source.meta["filename"])
        missing = [name for name in names if not (folder / name).is_file()]
        if missing and not self.download:
            raise missing_files_error(
                self.registered_name, Path(self.root), folder, missing, "download is off"
            )
        if missing:
            try:
                download_and_extract_archive(
                    source.url, self.root, filename=source.filename, md5=source.tgz_md5
                )
            except Exception as error:  # noqa: BLE001 - any failure gets the same advice
                raise missing_files_error(
                    self.registered_name,
                    Path(self.root),
                    folder,
                    missing,
                    f"download failed: {error}",
                ) from error
        classes = unpickle_cifar(folder / source.meta["filename"])[source.meta["key"]]

        def decode() -> dict:
            return {
                split: read_cifar_batches(folder, [name for name, _ in files], self.label_key)
                for split, files in (("train", source.train_list), ("test", source.test_list))
            }

        if self.cache:
            sources = [folder / name for name in names]
            decoded = load_or_decode(
                self.registered_name, folder, sources, decode, expected=image_layout((3, 32, 32))
            )
        else:
            decoded = decode()
        train, val = hold_out(decoded["train"], self.val_fraction, self.split_seed)
        test = decoded["test"]
        info = DatasetInfo(
            task="classification",
            input_shape=(3, 32, 32),
            num_outputs=len(classes),
            mean=self.channel_mean,
            std=self.channel_std,
            class_names=tuple(classes),
            value_range=(0.0, 255.0),
        )
        return DatasetSplits(info, train, val, test)


@register_dataset("cifar10")
@dataclass(frozen=True)
class CIFAR10(_CIFARFormat):
    """CIFAR-10 (50,000 train and 10,000 test colour images, 32x32, 10 classes)."""

    torchvision_class = "CIFAR10"
    label_key = "labels"
    channel_mean = (125.31, 122.95, 113.87)
    channel_std = (62.99, 62.09, 66.70)


@register_dataset("cifar100")
@dataclass(frozen=True)
class CIFAR100(_CIFARFormat):
    """CIFAR-100 (50,000 train and 10,000 test colour images, 32x32, 100 classes)."""

    torchvision_class = "CIFAR100"
    label_key = "fine_labels"
    channel_mean = (129.30, 124.07, 112.43)
    channel_std = (68.17, 65.39, 70.42)
