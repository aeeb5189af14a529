"""grad_norm: the gradients' norm every N optimizer steps, to the trackers and training.log."""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.callbacks import Callback, CallbackConfig, register_callback

MAIN_OPTIMIZER = "main"
"""The name the trainer gives the optimizer of a model that declares none of its own
(toolbox.training.state.MAIN_OPTIMIZER, which this layer does not import)."""


@register_callback("grad_norm")
@dataclass(frozen=True)
class GradNorm(CallbackConfig):
    """Log the norm of all gradients (after unscaling and --clip-grad) every N steps."""

    every: int = 50
    """Optimizer steps between two measurements (each costs one host sync)."""
    norm_type: float = 2.0
    """The p of the p-norm (2: Euclidean; inf: the largest absolute gradient)."""

    def problems(self) -> list[str]:
        found = self.not_positive("every")
        if not (self.norm_type > 0 or self.norm_type == math.inf):
            found.append(f"{self.option('norm_type')} is {self.norm_type}; give a p > 0 or inf.")
        return found

    def build(self) -> Callback:
        return GradNormLogger(self)


class GradNormLogger(Callback):
    """Measures before every ``every``-th optimizer step the norm that step applies (after
    --clip-grad, so a clipped run logs at most the clipping threshold)."""

    def __init__(self, options: GradNorm) -> None:
        self.options = options

    def on_before_optimizer_step(self, trainer, name: str) -> None:
        step = trainer.state.progress.step + 1  # the step about to happen
        if step % self.options.every:
            return
        norm = total_norm(self._gradients(trainer, name), self.options.norm_type)
        if norm is not None:
            key = "grad_norm" if name == MAIN_OPTIMIZER else f"grad_norm_{name}"
            trainer.log_values({key: norm}, step)

    @staticmethod
    def _gradients(trainer, name: str) -> list:
        """The gradients of what the optimizer ``name`` trains (the whole model's when the
        run does not name its optimizers' parameters)."""
        entry = getattr(trainer.state, "optimizers", {}).get(name)
        parameters = entry.parameters if entry is not None else trainer.model.parameters()
        return [parameter.grad for parameter in parameters if parameter.grad is not None]


def total_norm(gradients: list, norm_type: float) -> float | None:
    """The p-norm of all ``gradients`` together (None if there are none), read with one host
    sync: the per-tensor norms stay on the device until the total is read."""
    if not gradients:
        return None
    import torch

    device = gradients[0].device
    norms = [
        torch.linalg.vector_norm(grad.detach(), norm_type, dtype=torch.float32).to(device)
        for grad in gradients
    ]
    return float(torch.linalg.vector_norm(torch.stack(norms), norm_type))
