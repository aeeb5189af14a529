"""Evaluation over a whole split: exact losses and metrics, optionally per-sample predictions.

Sums and counts stay on the device; one transfer at the end is their only host sync. Under
torchrun each rank's loader holds its share of the split and ``reduce`` (an all-reduce
sum) adds up the sums and counts of all ranks, so the results are exact over the split.
The metrics that are not sums (MetricConfig.make_state: macro F1, AUROC) keep torchmetrics
states, which every rank computes once at the end; given ``reduce``, torchmetrics gathers
the states of all ranks first, so they too are those of the whole split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from toolbox.data.loaders import Normalizer, to_device
from toolbox.errors import UserError
from toolbox.metrics import MetricConfig
from toolbox.models.steps import MAIN_LOSS, StepOutput
from toolbox.training.runtime import autocast
from toolbox.training.steps import CriterionSteps, StepRunner, prediction_columns

if TYPE_CHECKING:
    from torchmetrics import Metric, MetricCollection

Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Evaluation:
    """Results of one pass over a split, already on the host."""

    losses: dict[str, float]
    """Each named loss (MAIN_LOSS first), averaged over the split's samples."""
    metrics: dict[str, float]
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)
    """The per-sample columns of the steps' ``prediction_columns`` (a plain model's
    ``target``, ``prediction``, ``loss`` and, for classes, ``probability``), or the outputs
    of a model's own evaluation step."""
    tables: dict[str, torch.Tensor] = field(default_factory=dict)
    """With ``class_tables``: toolbox.metrics.per_class.scores.class_tables over the split
    (``confusion_matrix``, and each class's ``recall``, ``precision``, ``f1``)."""
    probabilities: torch.Tensor | None = None
    """With ``class_tables`` and ``keep_predictions``: each sample's class probabilities
    (N, C), the softmax of the ``outputs["prediction"]`` that the metrics score."""

    @property
    def loss(self) -> float:
        return self.losses[MAIN_LOSS]


class _Totals:
    """Running sums of the named losses (weighted by samples) and of the metrics, and the
    torchmetrics states of the metrics that are not sums (and of ``class_tables``)."""

    def __init__(
        self,
        loss_names: tuple[str, ...],
        metrics: dict[str, MetricConfig],
        device,
        *,
        class_tables: bool = False,
        synced: bool = False,
    ) -> None:
        self.loss_names, self.metrics, self.device = loss_names, metrics, device
        self.class_tables, self.synced = class_tables, synced
        # float64, so that sums over a whole split lose nothing to rounding; MPS has no
        # float64, so there they are float32 (counts stay exact up to 2**24).
        self.dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.loss_sums = torch.zeros(len(loss_names), device=device, dtype=self.dtype)
        self.metric_sums = torch.zeros(len(metrics), device=device, dtype=self.dtype)
        self.metric_counts = [0] * len(metrics)
        self.num_samples = 0
        self.kept: dict[str, list[torch.Tensor]] = {}
        self.kept_probabilities: list[torch.Tensor] = []
        # Made at the first batch with outputs, whose width (the number of classes) they need.
        self.states: dict[str, Metric] | None = None
        self.tables: MetricCollection | None = None
        self.num_outputs = 0

    def make_states(self, num_outputs: int) -> None:
        options = {"sync_on_compute": self.synced}
        self.states = {}
        for name, metric in self.metrics.items():
            state = metric.make_state(num_outputs, **options)
            if state is not None:
                self.states[name] = state.to(self.device)
        if self.class_tables:
            from toolbox.metrics.per_class.scores import class_tables

            self.tables = class_tables(num_outputs, **options).to(self.device)
        self.num_outputs = num_outputs

    def batch_loss_sums(self, losses: dict[str, torch.Tensor], num_samples: int) -> torch.Tensor:
        """The batch's sum of each named loss: a batch mean times the samples, or the exact
        sum of per-sample values (see toolbox.models.steps)."""
        return torch.stack(
            [
                value.sum().to(self.dtype) if value.ndim else value.to(self.dtype) * num_samples
                for value in (losses[name] for name in self.loss_names)
            ]
        )

    def add(self, loss_sums: torch.Tensor, num_samples: int, output, target) -> None:
        self.loss_sums += loss_sums
        self.num_samples += num_samples
        if output is None:  # a model's own steps that predict nothing, scored by no metric
            return
        if self.states is None:
            self.make_states(output.shape[1] if output.ndim > 1 else 1)
        for index, (name, metric) in enumerate(self.metrics.items()):
            if name in self.states:
                self.states[name].update(output, target)
            else:
                total, count = metric.batch_sum(output, target)
                self.metric_sums[index] += total
                self.metric_counts[index] += count
        if self.tables is not None:
            self.tables.update(output, target)

    def keep(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.kept.setdefault(key, []).append(value)

    def result(self, reduce: Reduce | None) -> Evaluation:
        device = self.loss_sums.device
        # Last, the number of outputs, whether this rank saw any, and 1 (the ranks, summed):
        # a rank without samples learns which states the others made.
        counts = [self.num_samples, *self.metric_counts]
        counts += [self.num_outputs, self.num_outputs > 0, 1]
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
        num_samples, *metric_counts, outputs_sum, num_ranks_with_outputs, num_ranks = (
            round(n) for n in values[num_losses + num_metrics :]
        )
        if self.states is None and num_ranks_with_outputs:
            self.make_states(outputs_sum // num_ranks_with_outputs)
        states = self.states or {}
        if (states or self.tables) and num_ranks_with_outputs < num_ranks:
            # Said by every rank, rather than a hang: torchmetrics cannot gather the states
            # of a rank that saw no sample (it never learnt their shapes and types).
            raise UserError(
                f"--metrics {' '.join(states)}: {num_ranks - num_ranks_with_outputs} of the "
                f"{num_ranks} processes got none of the {num_samples} samples of the split "
                "to evaluate; use fewer processes, or a larger split (e.g. --data.val-fraction)."
            )
        return Evaluation(
            losses={
                name: total / max(num_samples, 1)
                for name, total in zip(self.loss_names, loss_totals, strict=True)
            },
            # Every rank computes the states in the same order: each gathers them all.
            metrics={
                name: float(states[name].compute())
                if name in states
                else metric.finalize(total, count)
                for (name, metric), total, count in zip(
                    self.metrics.items(), metric_totals, metric_counts, strict=True
                )
            },
            predictions={key: torch.cat(values).cpu() for key, values in self.kept.items()},
            tables={}
            if self.tables is None
            else {key: value.cpu() for key, value in self.tables.compute().items()},
            probabilities=torch.cat(self.kept_probabilities).cpu()
            if self.kept_probabilities
            else None,
        )


@torch.no_grad()
def evaluate_steps(
    steps: nn.Module,
    loader,
    *,
    normalizer: Normalizer,
    metrics: dict[str, MetricConfig],
    device: torch.device,
    precision: str,
    runner: nn.Module | None = None,
    keep_predictions: bool = False,
    class_tables: bool = False,
    reduce: Reduce | None = None,
) -> Evaluation:
    """The named losses of ``steps``' evaluation step (toolbox.models.steps) over the split,
    the metrics of its ``outputs["prediction"]``, and (``keep_predictions``) the per-sample
    columns test.py writes. ``runner`` runs the steps: a steps.StepRunner, maybe in DDP or
    compiled (the trainer's); by default a plain one. ``class_tables``: the predictions are
    class logits; give the per-class tables too and, with ``keep_predictions``, each
    sample's class probabilities. ``reduce``: results over all ranks, not this one's share."""
    runner = runner if runner is not None else StepRunner(steps)
    columns = prediction_columns(steps)
    was_training = steps.training
    runner.eval()
    totals = _Totals(
        tuple(steps.loss_names),
        metrics,
        device,
        class_tables=class_tables,
        synced=reduce is not None,
    )
    for batch in loader:
        batch = to_device(batch, device)
        batch = {**batch, "input": normalizer(batch["input"])}
        num_samples = len(batch["input"])
        with autocast(device, precision):
            losses, outputs = runner(batch, False)
        prediction = outputs.get("prediction")
        if metrics and prediction is None:
            raise UserError(
                f"--metrics {' '.join(metrics)}: this model's evaluation step returns no "
                "outputs['prediction'] to score; run it with --metrics and no names."
            )
        output = None if prediction is None else prediction.float()
        loss_sums = totals.batch_loss_sums(losses, num_samples)
        totals.add(loss_sums, num_samples, output, batch.get("target"))
        if keep_predictions:
            totals.keep(columns(batch, StepOutput(losses, outputs)))
            if class_tables and output is not None:
                totals.kept_probabilities.append(output.softmax(dim=1))
    runner.train(was_training)
    return totals.result(reduce)


def evaluate(
    model: nn.Module, loader, *, criterion: nn.Module, classification: bool, **options
) -> Evaluation:
    """evaluate_steps of a plain model whose output ``criterion`` scores (CriterionSteps);
    ``options`` are evaluate_steps'."""
    return evaluate_steps(CriterionSteps(model, criterion, classification), loader, **options)
