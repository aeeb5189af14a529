"""Classification metrics that average over classes: not sums over samples, so each keeps a
torchmetrics state over the split (``make_state``). Their torch code is in ``scores.py``,
imported when an evaluation starts, never by ``--help``."""

from __future__ import annotations

from dataclasses import dataclass

from toolbox.metrics import MetricConfig, register_metric


@register_metric("f1_macro")
@dataclass(frozen=True)
class MacroF1(MetricConfig):
    """Macro F1: each class's F1 over the split (from its precision and recall), averaged
    over the classes that are in the targets or the predictions."""

    tasks = ("classification",)

    def make_state(self, num_outputs, **options):
        from toolbox.metrics.per_class.scores import macro_f1

        return macro_f1(num_outputs, **options)


@register_metric("balanced_accuracy")
@dataclass(frozen=True)
class BalancedAccuracy(MetricConfig):
    """Balanced accuracy: each class's accuracy (its recall) over the split, averaged over
    the classes, so that a rare class counts as much as a common one."""

    tasks = ("classification",)

    def make_state(self, num_outputs, **options):
        from toolbox.metrics.per_class.scores import balanced_accuracy

        return balanced_accuracy(num_outputs, **options)


@register_metric("auroc")
@dataclass(frozen=True)
class AUROC(MetricConfig):
    """Area under the ROC curve of the softmax probabilities: one class against the rest,
    averaged over the classes in the split; with two classes, the AUROC of class 1."""

    tasks = ("classification",)

    def make_state(self, num_outputs, **options):
        from toolbox.metrics.per_class.scores import auroc

        return auroc(num_outputs, **options)
