"""A new dataset defined in your own script: register it, then train the mlp on it.

Shows: a dataset config whose build() returns the three splits as tensors plus a DatasetInfo
(task, input shape, number of classes, normalisation statistics); its fields become --data.*
options. Here: scikit-learn's two interleaving half-moons, generated, so nothing is
downloaded.

Usage (from the repository root; any train.py option may follow, later ones win):

    uv run examples/02_custom_dataset.py                    # 5 epochs of mlp: ~1 s + imports
    uv run examples/02_custom_dataset.py --help             # train.py's help, with --data.*
    uv run examples/02_custom_dataset.py --data.noise 0.3 --model.hidden-sizes 64 64
    uv run examples/02_custom_dataset.py test outputs/<run> # test.py on the run's test split

As in 01_custom_model.py, only this script knows `moons`: evaluate and resume its runs
through it, or move the class into toolbox/datasets/moons.py to make it a built-in.
"""

import sys
from dataclasses import dataclass

from toolbox.cli import script_main
from toolbox.datasets import DatasetConfig, DatasetInfo, DatasetSplits, register_dataset


@register_dataset("moons")
@dataclass(frozen=True)
class Moons(DatasetConfig):
    """Two interleaving half-moons in the plane (scikit-learn's make_moons), 2 classes."""

    num_samples: int = 2000
    """Number of points generated, before the test and validation splits are held out."""
    noise: float = 0.2
    """Standard deviation of the Gaussian noise added to each coordinate (moons of radius 1)."""
    test_fraction: float = 0.2
    """Fraction of the points held out as the test split, in (0, 1)."""

    def problems(self) -> list[str]:
        found = super().problems() + self.not_positive("num_samples")  # --data.val-fraction too
        if not self.noise >= 0:
            found.append(f"--data.noise is {self.noise}; it must be >= 0.")
        if not 0.0 < self.test_fraction < 1.0:
            found.append(f"--data.test-fraction is {self.test_fraction}; it must be in (0, 1).")
        return found

    def build(self) -> DatasetSplits:
        import torch
        from sklearn.datasets import make_moons

        from toolbox.data.splits import hold_out

        # The split seed also seeds the points, so a run is reproduced from its config alone.
        points, labels = make_moons(
            self.num_samples, noise=self.noise, random_state=self.split_seed
        )
        samples = {
            "input": torch.tensor(points, dtype=torch.float32),  # (N, 2)
            "target": torch.tensor(labels),  # (N,) class indices, int64
        }
        rest, test = hold_out(samples, self.test_fraction, self.split_seed)
        train, val = hold_out(rest, self.val_fraction, self.split_seed + 1)
        # One mean and std per feature, from the training split only (no test leakage).
        mean, std = train["input"].mean(dim=0), train["input"].std(dim=0)
        info = DatasetInfo(
            task="classification",
            input_shape=(2,),
            num_outputs=2,
            mean=tuple(mean.tolist()),
            std=tuple(std.tolist()),
            class_names=("upper", "lower"),
        )
        return DatasetSplits(info, train, val, test)


if __name__ == "__main__":
    sys.exit(script_main("--arch mlp --dataset moons --epochs 5 --optim.lr 0.01".split()))
