"""A pinned, seeded loss curve: three epochs of a fixed tiny run on the CPU, to 1e-4 relative.

The other tests check that training learns; this one notices when the numbers change at
all: an initialisation, a data order, a loss reduction, a schedule or an optimizer detail.
"""

from __future__ import annotations

import csv

import pytest

from tests.conftest import TINY

# train_loss and val_loss of epochs 1, 2 and 3 of TINY with --epochs 3 --seed 0 (mlp on
# synthetic data, AdamW, cosine schedule, CPU). A change to these numbers means that the
# numerics changed: the commit that changes them must say why, and pin the new values.
PINNED = [
    (2.0253253910276623, 1.5876984596252441),
    (1.329258640607198, 1.2106926441192627),
    (1.0954478647973802, 1.1470571756362915),
]


def test_three_seeded_epochs_give_the_pinned_losses(train, tmp_path):
    assert train(*TINY, "--epochs", "3", "--seed", "0", "--run-name", "pinned") == 0
    with open(tmp_path / "outputs" / "pinned" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    curve = [(float(row["train_loss"]), float(row["val_loss"])) for row in rows]
    assert curve == [pytest.approx(pinned, rel=1e-4) for pinned in PINNED]
