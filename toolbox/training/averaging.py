"""An exponential moving average (EMA) of a model's weights, for --ema-decay.

Evaluating the average instead of the last weights smooths out the noise of the last steps:
diffusion models (Ho et al. 2020) and many image classifiers (timm's --model-ema) sample and
score with it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_STEPS = 10
"""The decay after n updates is min(decay, (1 + n) / (WARMUP_STEPS + n)): early on the
average follows the weights closely, so that a short run's average is not its initial ones."""


class WeightAverage:
    """A frozen copy of ``model`` whose floating-point parameters and buffers move toward the
    model's after each optimizer step: ``average = decay * average + (1 - decay) * weights``.

    Other buffers (counters such as BatchNorm's ``num_batches_tracked``) are copied. The
    number of updates is the trainer's optimizer step, passed in, so that a resumed run goes
    on with the same decays without saving it twice.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The decay of update number ``updates`` (1 for the first)."""
        return min(self.decay, (1 + updates) / (WARMUP_STEPS + updates))

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """Move the average toward ``model``'s current weights; ``updates`` counts this one."""
        averaged, current = self._floating(self.module), self._floating(model)
        # One fused kernel per device and dtype rather than one per tensor (as torch's own
        # swa_utils.get_ema_multi_avg_fn does).
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(updates))
        for average, value in zip(self.module.buffers(), model.buffers(), strict=True):
            if not average.is_floating_point():
                average.copy_(value)

    @staticmethod
    def _floating(module: nn.Module) -> list[torch.Tensor]:
        tensors = [*module.parameters(), *module.buffers()]
        return [tensor.detach() for tensor in tensors if tensor.is_floating_point()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed as the model's own state_dict."""
        return self.module.state_dict()
