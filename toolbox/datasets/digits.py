from __future__ import annotations

from dataclasses import dataclass

from toolbox.datasets import DatasetConfig, DatasetInfo, DatasetSplits, register_dataset


@register_dataset("digits")
@dataclass(frozen=True)
class Digits(DatasetConfig):
    """The 8x8 handwritten digits bundled with scikit-learn (1,797 images, 10 classes)."""

    test_fraction: float = 0.2
    """Fraction of all images held out as the test split, in (0, 1)."""

    def problems(self) -> list[str]:
        found = super().problems()
        if not 0.0 < self.test_fraction < 1.0:
            found.append(f"--data.test-fraction is {self.test_fraction}; it must be in (0, 1).")
        return found

    def build(self) -> DatasetSplits:
        import torch
        from sklearn.datasets import load_digits

        from toolbox.data.splits import hold_out

        digits = load_digits()
        # Pixel values are integers 0..16; uint8 keeps them exact and small.
        images = torch.as_tensor(digits.images, dtype=torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
        everything = {"input": images, "target": torch.as_tensor(digits.target)}
        rest, test = hold_out(everything, self.test_fraction, self.split_seed)
        train, val = hold_out(rest, self.val_fraction, self.split_seed + 1)
        pixels = train["input"].float()
        info = DatasetInfo(
            task="classification",
            input_shape=(1, 8, 8),
            num_outputs=10,
            mean=(pixels.mean().item(),),
            std=(pixels.std().item(),),
            class_names=tuple(str(digit) for digit in range(10)),
            value_range=(0.0, 16.0),
        )
        return DatasetSplits(info, train, val, test)
