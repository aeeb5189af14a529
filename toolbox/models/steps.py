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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


MAIN_LOSS = "loss"


@dataclass
class StepOutput:
    losses: dict[str, torch.Tensor]
    """Named scalar losses, batch means; MAIN_LOSS is the one trained on."""
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-sample tensors (batch first) kept as predictions by test.py."""


def has_own_steps(module: Any) -> bool:
    return all(hasattr(module, name) for name in ("training_step", "evaluation_step", "loss_names"))
