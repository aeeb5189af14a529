"""The step contract: what the trainer, the evaluation and test.py call on every model.

A registered model's module may define ``training_step(batch)``, ``evaluation_step(batch)``
and ``loss_names`` (and optionally ``figures()`` and ``prediction_columns``); its config
sets ``own_steps = True`` and ``--criterion`` is not used. Any other model is a plain
predictor, ``model(batch["input"])``, which the trainer adapts into the same contract with
its criterion (``toolbox.training.steps.CriterionSteps``). Either way the trainer owns
autocast, backward, gradient scaling, accumulation, clipping, the optimizer and scheduler
steps, logging, DDP and checkpoints.

- ``batch`` is the loader's dict of tensors on the device, with ``batch["input"]`` already
  normalised by the dataset's per-channel mean and std (as any model sees it).
- Both steps return a ``StepOutput``. ``losses`` holds scalar tensors, each the mean over
  the batch's samples; ``losses["loss"]`` is the main loss: it is backpropagated (in
  training), and drives the scheduler, checkpoints and early stopping (as ``val_loss``).
  ``loss_names`` lists the names both steps return, MAIN_LOSS first; every one is logged
  as ``train_<name>`` and ``val_<name>`` (``train_loss`` and ``val_loss`` for the main one).
  An evaluation step may instead give a loss as a (B,) tensor of per-sample values: the
  split's value is then their exact sum over the split's samples (a plain model's loss).
- ``outputs`` holds per-sample tensors (first dimension the batch) that test.py writes as
  predictions; an ``outputs["prediction"]`` is scored against ``batch["target"]`` by
  ``--metrics``.
- ``prediction_columns(batch, result)`` (optional) turns an evaluation step's ``result``
  into the per-sample columns test.py writes (a classifier's predicted class and its
  probability rather than its logits); without it test.py writes ``outputs`` as floats.
- ``figures()`` is called once per evaluation, in eval mode without gradients, on the
  process that writes the run directory; it returns images as float (C, H, W) tensors in
  [0, 1] or matplotlib figures, which go to TensorBoard and to ``<name>.png`` in the run.

Several optimizers (manual optimization): a model with its own steps that also defines
``configure_optimizers() -> dict[str, NamedOptimizer]`` (a GAN's generator and
discriminator, say) drives them itself. Each ``NamedOptimizer`` holds its parameters (the
sets must not overlap) and its optimizer and scheduler configs (None: the run's --optim /
--sched). Its ``training_step(batch, optimization)`` then gets a context
(``toolbox.training.manual.ManualOptimization``) and calls, for each optimizer:

- ``optimization.backward(loss, name)``: backpropagates ``loss`` into that optimizer's
  parameters only (the others' gradients are left alone), scaled for fp16 and divided by
  the --grad-accum group's size, outside autocast;
- ``optimization.step(name)``: at the last batch of an accumulation group (elsewhere it
  does nothing), averages that optimizer's gradients over the ranks under torchrun,
  unscales and clips them (--clip-grad), steps the optimizer, zeroes its gradients and
  steps its per-step scheduler. Each optimizer steps at most once per training step.

The trainer still owns autocast, the gradient scaler (updated once per training step),
the weight average, logging and checkpoints (every optimizer's and scheduler's state);
the step still returns its losses (``losses["loss"]`` is only logged and monitored then).
Such a model is not wrapped in DDP (DDP cannot see backward passes made inside forward);
--nan-policy skip (which cannot undo the model's own steps) and --compile are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from toolbox.optimizers import OptimizerConfig
    from toolbox.schedulers import SchedulerConfig


MAIN_LOSS = "loss"


@dataclass
class StepOutput:
    losses: dict[str, torch.Tensor]
    """Named scalar losses, batch means; MAIN_LOSS is the one trained on."""
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-sample tensors (batch first) kept as predictions by test.py."""


def has_own_steps(module: Any) -> bool:
    return all(hasattr(module, name) for name in ("training_step", "evaluation_step", "loss_names"))


@dataclass
class NamedOptimizer:
    """One of the optimizers a model drives itself (``configure_optimizers``)."""

    parameters: Iterable[torch.nn.Parameter]
    """The parameters it trains (those with requires_grad); no other optimizer's."""
    optim: OptimizerConfig | None = None
    """Its optimizer (e.g. ``Adam(lr=2e-4, beta1=0.5)``); None: the run's --optim."""
    sched: SchedulerConfig | None = None
    """Its learning-rate schedule; None: the run's --sched."""


def has_manual_optimization(module: Any) -> bool:
    """Whether the model drives its own optimizers (it declares them)."""
    return hasattr(module, "configure_optimizers")
