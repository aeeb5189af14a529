from __future__ import annotations

from dataclasses import dataclass

from toolbox.criteria import CriterionConfig, register_criterion


@register_criterion("cross_entropy")
@dataclass(frozen=True)
class CrossEntropy(CriterionConfig):
    """Cross-entropy between class logits and integer class targets."""

    tasks = ("classification",)

    label_smoothing: float = 0.0
    """Probability mass spread uniformly over all classes, in [0, 1)."""

    def problems(self) -> list[str]:
        return self.not_probability("label_smoothing")

    def build(self):
        from torch import nn

        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
