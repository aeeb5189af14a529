"""Evaluation over a whole split: exact losses and metrics, optionally per-sample predictions.

Sums and counts stay on the device; one transfer at the end is the only host sync. Under
torchrun each rank's loader holds its share of the split and ``reduce`` (an all-reduce
sum) adds up the sums and counts of all ranks, so the results are exact over the split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from toolbox.data.loaders import Normalizer, to_device
from toolbox.errors import UserError
from toolbox.metrics import MetricConfig
from toolbox.models.steps import MAIN_LOSS
from toolbox.training.runtime import autocast

Reduce = Callable[[torch.Tensor], torch.Tensor]


def per_sample_criterion(criterion: nn.Module) -> nn.Module:
    """A copy of a torch loss module that returns one loss per element (reduction "none")."""
    per_sample = copy.copy(criterion)
    per_sample.reduction = "none"
    return per_sample


@dataclass
class Evaluation:
    """Results of one pass over a split, already on the host."""

    losses: dict[str, float]
    """Each named loss (MAIN_LOSS first), averaged over the split's samples."""
    metrics: dict[str, float]
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-sample ``loss``, ``target``, ``prediction`` (and ``probability`` for classes), or
    the outputs of a model's own evaluation step."""

    @property
    def loss(self) -> float:
        return self.losses[MAIN_LOSS]


class _Totals:
    """Running sums of the named losses (weighted by samples) and of the metrics."""

    def __init__(
        self, loss_names: tuple[str, ...], metrics: dict[str, MetricConfig], device
    ) -> None:
        self.loss_names, self.metrics = loss_names, metrics
        # float64, so that sums over a whole split lose nothing to rounding; MPS has no
        # float64, so there they are float32 (counts stay exact up to 2**24).
        self.dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.loss_sums = torch.zeros(len(loss_names), device=device, dtype=self.dtype)
        self.metric_sums = torch.zeros(len(metrics), device=device, dtype=self.dtype)
        self.metric_counts = [0] * len(metrics)
        self.num_samples = 0
        self.kept: dict[str, list[torch.Tensor]] = {}

    def add(self, loss_sums: torch.Tensor, num_samples: int, output, target) -> None:
        self.loss_sums += loss_sums
        self.num_samples += num_samples
        for index, metric in enumerate(self.metrics.values()):
            total, count = metric.batch_sum(output, target)
            self.metric_sums[index] += total
            self.metric_counts[index] += count

    def keep(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.kept.setdefault(key, []).append(value)

    def result(self, reduce: Reduce | None) -> Evaluation:
        device = self.loss_sums.device
        counts = [self.num_samples, *self.metric_counts]
        totals = torch.cat(
            [
                self.loss_sums,
                self.metric_sums,
                torch.tensor(counts, device=device, dtype=self.dtype),
            ]
        )
        if reduce is not None:
            reduce(totals)
        values = totals.tolist()
        num_losses, num_metrics = len(self.loss_names), len(self.metrics)
        loss_totals = values[:num_losses]
        metric_totals = values[num_losses : num_losses + num_metrics]
        num_samples, *metric_counts = (round(n) for n in values[num_losses + num_metrics :])
        return Evaluation(
            losses={
                name: total / max(num_samples, 1)
                for name, total in zip(self.loss_names, loss_totals, strict=True)
            },
            metrics={
                name: metric.finalize(total, count)
                for (name, metric), total, count in zip(
                    self.metrics.items(), metric_totals, metric_counts, strict=True
                )
            },
            predictions={key: torch.cat(values).cpu() for key, values in self.kept.items()},
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    normalizer: Normalizer,
    criterion: nn.Module,
    metrics: dict[str, MetricConfig],
    device: torch.device,
    precision: str,
    classification: bool,
    keep_predictions: bool = False,
    reduce: Reduce | None = None,
) -> Evaluation:
    """Loss and metrics of a model whose output the criterion scores."""
    was_training = model.training
    model.eval()
    per_sample = per_sample_criterion(criterion)
    totals = _Totals((MAIN_LOSS,), metrics, device)
    for batch in loader:
        batch = to_device(batch, device)
        target = batch["target"]
        with autocast(device, precision):
            output = model(normalizer(batch["input"]))
        output = output.float()
        losses = per_sample(output, target).reshape(target.shape[0], -1).mean(dim=1)
        totals.add(losses.sum().reshape(1), target.shape[0], output, target)
        if keep_predictions:
            if classification:
                probability, prediction = output.softmax(dim=1).max(dim=1)
                values = {"prediction": prediction, "loss": losses, "probability": probability}
                totals.keep({"target": target, **values})
            else:
                totals.keep({"target": target, "prediction": output, "loss": losses})
    model.train(was_training)
    return totals.result(reduce)


@torch.no_grad()
def evaluate_own_steps(
    step_module: nn.Module,
    loader,
    *,
    normalizer: Normalizer,
    loss_names: tuple[str, ...],
    metrics: dict[str, MetricConfig],
    device: torch.device,
    precision: str,
    keep_predictions: bool = False,
    reduce: Reduce | None = None,
) -> Evaluation:
    """Named losses of a model's own evaluation step (through ``step_module``, a
    steps.StepRunner, maybe wrapped), and metrics of its ``outputs["prediction"]``."""
    was_training = step_module.training
    step_module.eval()
    totals = _Totals(loss_names, metrics, device)
    for batch in loader:
        batch = to_device(batch, device)
        batch = {**batch, "input": normalizer(batch["input"])}
        num_samples = len(batch["input"])
        with autocast(device, precision):
            losses, outputs = step_module(batch, False)
        prediction = outputs.get("prediction")
        if metrics and prediction is None:
            raise UserError(
                f"--metrics {' '.join(metrics)}: this model's evaluation step returns no "
                "outputs['prediction'] to score; run it with --metrics and no names."
            )
        batch_losses = torch.stack([losses[name].to(totals.dtype) for name in loss_names])
        output = None if prediction is None else prediction.float()
        totals.add(batch_losses * num_samples, num_samples, output, batch.get("target"))
        if keep_predictions:
            totals.keep({key: value.float() for key, value in outputs.items()})
    step_module.train(was_training)
    return totals.result(reduce)
