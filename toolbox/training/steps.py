"""Every model through one step contract (toolbox.models.steps): a plain model is adapted
with its criterion (CriterionSteps), a StepRunner runs the steps under DDP and compile, and
draw_figures draws a model's figures."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from toolbox.models.steps import MAIN_LOSS, StepOutput, has_own_steps

PredictionColumns = Callable[[dict[str, torch.Tensor], StepOutput], dict[str, torch.Tensor]]


def per_sample_criterion(criterion: nn.Module) -> nn.Module:
    """A copy of a torch loss module that returns one loss per element (reduction "none")."""
    per_sample = copy.copy(criterion)
    per_sample.reduction = "none"
    return per_sample


class CriterionSteps(nn.Module):
    """A plain model (``model(batch["input"])``) and its criterion as a model with its own
    steps: the loss is the criterion on the output in float32, whatever the autocast
    precision, and ``outputs["prediction"]`` is the model's output, which --metrics score.

    Its evaluation step gives the loss per sample (each sample's elements averaged), so that
    the split's loss is their exact sum and test.py writes each sample's loss."""

    loss_names = (MAIN_LOSS,)

    def __init__(self, model: nn.Module, criterion: nn.Module, classification: bool) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.per_sample = per_sample_criterion(criterion)
        self.classification = classification

    def training_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        output = self.model(batch["input"])
        loss = self.criterion(output.float(), batch["target"])
        return StepOutput({MAIN_LOSS: loss}, {"prediction": output})

    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        output = self.model(batch["input"]).float()
        target = batch["target"]
        # (B, ...) element losses -> (B,): one loss per sample, as the batch mean weighs them.
        losses = self.per_sample(output, target).reshape(target.shape[0], -1).mean(dim=1)
        return StepOutput({MAIN_LOSS: losses}, {"prediction": output})

    def prediction_columns(
        self, batch: dict[str, torch.Tensor], result: StepOutput
    ) -> dict[str, torch.Tensor]:
        """target, prediction and loss per sample, and for classes the predicted class (not
        the logits) and its probability."""
        output, loss = result.outputs["prediction"], result.losses[MAIN_LOSS]
        if self.classification:
            probability, prediction = output.softmax(dim=1).max(dim=1)
            columns = {"prediction": prediction, "loss": loss, "probability": probability}
            return {"target": batch["target"], **columns}
        return {"target": batch["target"], "prediction": output, "loss": loss}


def as_steps(model: nn.Module, criterion: nn.Module, classification: bool) -> nn.Module:
    """``model`` itself if it has its own steps, else the model and ``criterion`` adapted
    into them: the one place where the two kinds of model differ."""
    if has_own_steps(model):
        return model
    return CriterionSteps(model, criterion, classification)


def prediction_columns(steps: nn.Module) -> PredictionColumns:
    """What test.py writes per sample for an evaluation step's result: the steps' own
    ``prediction_columns``, or their outputs as floats."""
    own = getattr(steps, "prediction_columns", None)
    if own is not None:
        return own
    return lambda batch, result: {key: value.float() for key, value in result.outputs.items()}


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
    """Runs a model's steps as its forward pass, so that DDP (whose gradient hooks are set
    up in forward) and torch.compile see them; returns (losses, outputs) as dicts, which
    both pass through (a StepOutput they would not)."""

    def __init__(self, steps: nn.Module) -> None:
        super().__init__()
        self.model = steps

    def forward(
        self, batch: dict[str, torch.Tensor], training: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        step = self.model.training_step if training else self.model.evaluation_step
        result = step(batch)
        return result.losses, result.outputs
