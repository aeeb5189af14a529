"""The torchmetrics states of the per-class metrics, and the per-class tables test.py writes.

Every state is updated with float32 logits (N, C) and class indices (N,). They are built
with ``validate_args=False``: torchmetrics' checks of the targets' values read them on the
host at every batch, and the datasets give class indices in range."""

from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.utilities import dim_zero_cat


def macro_f1(num_classes: int, **options) -> Metric:
    return MulticlassF1Score(num_classes, average="macro", validate_args=False, **options)


def balanced_accuracy(num_classes: int, **options) -> Metric:
    # torchmetrics' macro accuracy is the mean over classes of each class's recall.
    return MulticlassAccuracy(num_classes, average="macro", validate_args=False, **options)


def auroc(num_classes: int, **options) -> Metric:
    if num_classes == 2:
        return ClassOneAUROC(**options)
    return MacroAUROC(num_classes, **options)


class MacroAUROC(MulticlassAUROC):
    """One-vs-rest AUROC of the softmax probabilities, exact (every sample's probabilities
    are kept), averaged over the classes the split holds. A class without samples has no
    AUROC; torchmetrics' macro average would count it as 0."""

    def __init__(self, num_classes: int, **options) -> None:
        super().__init__(
            num_classes, average="none", thresholds=None, validate_args=False, **options
        )

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        super().update(logits.softmax(dim=1), target)

    def compute(self) -> torch.Tensor:
        # Called with the states of every rank gathered, when the evaluation syncs them.
        present = torch.bincount(dim_zero_cat(self.target), minlength=self.num_classes) > 0
        with warnings.catch_warnings():
            # Said of each absent class, which the mean leaves out.
            warnings.filterwarnings("ignore", "No positive samples in targets")
            per_class = super().compute()
        return per_class[present].mean()


class ClassOneAUROC(BinaryAUROC):
    """AUROC of class 1's softmax probability, for two classes, exact."""

    def __init__(self, **options) -> None:
        super().__init__(thresholds=None, validate_args=False, **options)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        super().update(logits.softmax(dim=1)[:, 1], target)


def class_tables(num_classes: int, **options) -> MetricCollection:
    """``confusion_matrix`` (C, C): samples of true class i (row) predicted as j (column);
    each class's ``recall`` (its accuracy), ``precision`` and ``f1`` (C,), 0 where they
    divide by 0, as scikit-learn's are."""
    per_class = {"average": "none", "validate_args": False, **options}
    return MetricCollection(
        {
            "confusion_matrix": MulticlassConfusionMatrix(
                num_classes, validate_args=False, **options
            ),
            "recall": MulticlassRecall(num_classes, **per_class),
            "precision": MulticlassPrecision(num_classes, **per_class),
            "f1": MulticlassF1Score(num_classes, **per_class),
        }
    )
