"""What the trainer does with a model's own steps: run them under DDP and compile, and draw
its figures."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def draw_figures(model: nn.Module) -> dict[str, Any]:
    """The model's ``figures()``, drawn in eval mode without gradients ({} if it has none);
    the model is left in the mode it was in."""
    if not hasattr(model, "figures"):
        return {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        figures = model.figures()
    model.train(was_training)
    return figures


class StepRunner(nn.Module):
    """Runs a model's own steps as its forward pass, so that DDP (whose gradient hooks are
    set up in forward) and torch.compile see them; returns (losses, outputs) as dicts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: dict[str, torch.Tensor], training: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        step = self.model.training_step if training else self.model.evaluation_step
        result = step(batch)
        return result.losses, result.outputs
