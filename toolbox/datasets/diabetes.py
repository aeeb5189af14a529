from __future__ import annotations

from dataclasses import dataclass

from toolbox.datasets import DatasetConfig, DatasetInfo, DatasetSplits, Task, register_dataset


@register_dataset("diabetes")
@dataclass(frozen=True)
class Diabetes(DatasetConfig):
    """scikit-learn's diabetes regression data (442 patients, 10 measurements): predict the
    disease progression a year later (25 to 346), with --criterion mse --metrics mae rmse."""

    test_fraction: float = 0.2
    """Fraction of all patients held out as the test split, in (0, 1)."""

    @property
    def task(self) -> Task:
        return "regression"

    def problems(self) -> list[str]:
        found = super().problems()
        if not 0.0 < self.test_fraction < 1.0:
            found.append(f"--data.test-fraction is {self.test_fraction}; it must be in (0, 1).")
        if self.augment != "none":
            found.append(f"--data.augment is {self.augment}; diabetes has no images: use none.")
        return found

    def build(self) -> DatasetSplits:
        import torch
        from sklearn.datasets import load_diabetes

        from toolbox.data.splits import hold_out

        # Unscaled measurements (age in years, BMI, ...): normalised below with the training
        # split's own statistics, so nothing is learnt from the held-out patients.
        features, progression = load_diabetes(return_X_y=True, scaled=False)
        everything = {
            "input": torch.as_tensor(features, dtype=torch.float32),
            "target": torch.as_tensor(progression, dtype=torch.float32).unsqueeze(1),
        }
        rest, test = hold_out(everything, self.test_fraction, self.split_seed)
        train, val = hold_out(rest, self.val_fraction, self.split_seed + 1)
        info = DatasetInfo(
            task="regression",
            input_shape=(features.shape[1],),
            num_outputs=1,
            mean=tuple(train["input"].mean(dim=0).tolist()),
            std=tuple(train["input"].std(dim=0).tolist()),
        )
        return DatasetSplits(info, train, val, test)
