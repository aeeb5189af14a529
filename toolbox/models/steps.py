"""The contract of a model that defines its own training and evaluation steps.

A registered model's module may define ``training_step(batch)``, ``evaluation_step(batch)``
and ``loss_names`` (and optionally ``figures()``); its config sets ``own_steps = True``. The
trainer then calls them instead of ``criterion(model(x), y)`` but still owns autocast,
backward, gradient scaling, accumulation, clipping, the optimizer and scheduler steps,
logging, DDP and checkpoints. ``--criterion`` is not used.

- ``batch`` is the loader's dict of tensors on the device, with ``batch["input"]`` already
  normalised by the dataset's per-channel mean and std (as any model sees it).
- Both steps return a ``StepOutput``. ``losses`` holds scalar tensors, each the mean over
  the batch's samples; ``losses["loss"]`` is the main loss: it is backpropagated (in
  training), and drives the scheduler, checkpoints and early stopping (as ``val_loss``).
  ``loss_names`` lists the names both steps return, MAIN_LOSS first; every one is logged
  as ``train_<name>`` and ``val_<name>`` (``train_loss`` and ``val_loss`` for the main one).
- ``outputs`` holds per-sample tensors (first dimension the batch) that test.py writes as
  predictions; an ``outputs["prediction"]`` is scored against ``batch["target"]`` by
  ``--metrics``.
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
