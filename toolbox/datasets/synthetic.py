from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from toolbox.datasets import DatasetConfig, DatasetInfo, DatasetSplits, register_dataset


@register_dataset("synthetic")
@dataclass(frozen=True)
class Synthetic(DatasetConfig):
    """A generated, learnable task: noisy class prototypes, or a noisy linear regression."""

    task: Literal["classification", "regression"] = "classification"
    """classification: inputs are a class prototype plus noise; regression: targets are a
    fixed linear map of the inputs plus noise."""
    num_train: int = 2048
    """Number of training samples (before --data.val-fraction is held out)."""
    num_test: int = 512
    """Number of test samples."""
    num_classes: int = 10
    """Number of classes (classification) or of target values (regression)."""
    input_shape: tuple[int, ...] = (1, 8, 8)
    """Shape of one input: (C, H, W) for images, or (D,) for vectors."""
    noise: float = 1.0
    """Standard deviation of the noise added to each input value (classification) or target
    value (regression); the signal has standard deviation 1."""
    seed: int = 0
    """Seed of the generator that makes the data."""

    def problems(self) -> list[str]:
        found = super().problems()
        sizes = self.not_positive("num_train", "num_test", "num_classes")
        if not self.input_shape or min(self.input_shape) <= 0:
            sizes.append(
                f"--data.input-shape is {list(self.input_shape)}; give positive sizes, "
                "e.g. --data.input-shape 3 32 32."
            )
        if sizes:
            found += sizes
        else:  # valid sizes: what build() allocates is known
            width = math.prod(self.input_shape)
            # build() keeps per sample a float32 input and an int64 label (float32 targets
            # for regression), and once the float32 class prototypes (the regression's map).
            target_bytes = 8 if self.task == "classification" else 4 * self.num_classes
            found += self.memory_problems(
                f"--data.num-train {self.num_train}, --data.num-test {self.num_test}, "
                f"--data.num-classes {self.num_classes} and --data.input-shape "
                + " ".join(map(str, self.input_shape)),
                fixed_bytes=4 * width * self.num_classes,
                sample_bytes=4 * width + target_bytes,
                samples=self.num_train + self.num_test,
            )
        if not 0 <= self.noise < math.inf:  # also catches nan
            found.append(
                f"--data.noise is {self.noise}; give a finite standard deviation >= 0 (e.g. 1.0)."
            )
        return found + self.not_seed("seed")

    def build(self) -> DatasetSplits:
        import torch

        from toolbox.data.splits import hold_out

        generator = torch.Generator().manual_seed(self.seed)
        width = math.prod(self.input_shape)
        count = self.num_train + self.num_test
        if self.task == "classification":
            prototypes = torch.randn(self.num_classes, width, generator=generator)
            targets = torch.randint(self.num_classes, (count,), generator=generator)
            noise = torch.randn(count, width, generator=generator) * self.noise
            inputs = prototypes[targets] + noise
        else:
            inputs = torch.randn(count, width, generator=generator)
            weights = torch.randn(width, self.num_classes, generator=generator) / math.sqrt(width)
            noise = torch.randn(count, self.num_classes, generator=generator) * self.noise
            targets = inputs @ weights + noise
        samples = {"input": inputs.reshape(count, *self.input_shape), "target": targets}
        train = {key: value[: self.num_train] for key, value in samples.items()}
        test = {key: value[self.num_train :] for key, value in samples.items()}
        train, val = hold_out(train, self.val_fraction, self.split_seed)
        info = DatasetInfo(
            task=self.task,
            input_shape=tuple(self.input_shape),
            num_outputs=self.num_classes,
            class_names=tuple(map(str, range(self.num_classes)))
            if self.task == "classification"
            else (),
        )
        return DatasetSplits(info, train, val, test)
