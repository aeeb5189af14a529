"""Evaluation over a whole split: exact loss and metrics, optionally per-sample predictions."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from toolbox.data.loaders import Normalizer, to_device
from toolbox.metrics import MetricConfig
from toolbox.runtime import autocast


def per_sample_criterion(criterion: nn.Module) -> nn.Module:
    """A copy of a torch loss module that returns one loss per element (reduction "none")."""
    per_sample = copy.copy(criterion)
    per_sample.reduction = "none"
    return per_sample


@dataclass
class Evaluation:
    """Results of one pass over a split, already on the host."""

    loss: float
    metrics: dict[str, float]
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-sample ``loss``, ``target``, ``prediction`` (and ``probability`` for classes)."""


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
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Evaluation:
    """Loss and metrics over ``loader``'s samples. Under torchrun each rank's loader holds
    its share of the split, and ``reduce`` (an all-reduce sum) adds up the sums and counts
    of all ranks, so the results are exact over the whole split."""
    was_training = model.training
    model.eval()
    per_sample = per_sample_criterion(criterion)
    # Sums and counts stay on the device; one transfer at the end is the only host sync.
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    metric_sums = torch.zeros(len(metrics), device=device, dtype=torch.float64)
    metric_counts = [0] * len(metrics)
    num_samples = 0
    kept: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        batch = to_device(batch, device)
        target = batch["target"]
        with autocast(device, precision):
            output = model(normalizer(batch["input"]))
        output = output.float()
        losses = per_sample(output, target).reshape(target.shape[0], -1).mean(dim=1)
        loss_sum += losses.sum()
        num_samples += target.shape[0]
        for index, metric in enumerate(metrics.values()):
            total, count = metric.batch_sum(output, target)
            metric_sums[index] += total
            metric_counts[index] += count
        if keep_predictions:
            if classification:
                probabilities = output.softmax(dim=1)
                probability, prediction = probabilities.max(dim=1)
                values = {"prediction": prediction, "probability": probability}
            else:
                values = {"prediction": output}
            values.update(loss=losses, target=target)
            for key, value in values.items():
                kept.setdefault(key, []).append(value)
    model.train(was_training)
    counts = torch.tensor([num_samples, *metric_counts], device=device, dtype=torch.float64)
    totals = torch.cat([loss_sum.reshape(1), metric_sums, counts])
    if reduce is not None:
        reduce(totals)
    values = totals.tolist()
    loss_total, metric_totals = values[0], values[1 : 1 + len(metrics)]
    num_samples, *metric_counts = (round(count) for count in values[1 + len(metrics) :])
    return Evaluation(
        loss=loss_total / max(num_samples, 1),
        metrics={
            name: metric.finalize(total, count)
            for (name, metric), total, count in zip(
                metrics.items(), metric_totals, metric_counts, strict=True
            )
        },
        predictions={key: torch.cat(values).cpu() for key, values in kept.items()},
    )
