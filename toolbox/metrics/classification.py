from __future__ import annotations

from dataclasses import dataclass

from toolbox.metrics import MetricConfig, register_metric


@register_metric("accuracy")
@dataclass(frozen=True)
class Accuracy(MetricConfig):
    """Top-1 accuracy: the fraction of samples whose highest logit is the target class."""

    tasks = ("classification",)

    def batch_sum(self, output, target):
        return (output.argmax(dim=1) == target).sum(), target.shape[0]


@register_metric("top5")
@dataclass(frozen=True)
class Top5(MetricConfig):
    """Top-5 accuracy: the fraction of samples whose target is among the 5 highest logits."""

    tasks = ("classification",)

    def batch_sum(self, output, target):
        k = min(5, output.shape[1])
        top = output.topk(k, dim=1).indices
        return (top == target.unsqueeze(1)).any(dim=1).sum(), target.shape[0]
