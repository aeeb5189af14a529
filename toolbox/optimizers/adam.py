from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.optimizers import OptimizerConfig, register_optimizer


@dataclass(frozen=True)
class _AdamFamily(OptimizerConfig):
    beta1: float = 0.9
    """Decay rate of the first-moment (gradient) average, in [0, 1)."""
    beta2: float = 0.999
    """Decay rate of the second-moment (squared gradient) average, in [0, 1)."""
    eps: float = 1e-8
    """Added to the denominator for numerical stability; positive."""

    def problems(self) -> list[str]:
        found = super().problems() + self.not_probability("beta1", "beta2")
        # torch refuses a negative or nan eps only when the optimizer is built; 0 divides 0
        # by 0 for a weight whose gradients are all 0, and inf makes every step 0.
        if not 0 < self.eps < math.inf:
            found.append(f"--optim.eps is {self.eps}; it must be positive and finite (e.g. 1e-8).")
        return found


@register_optimizer("adam")
@dataclass(frozen=True)
class Adam(_AdamFamily):
    """Adam; weight decay is an L2 penalty added to the gradient."""

    def build(self, model):
        import torch

        return torch.optim.Adam(
            self.param_groups(model),
            lr=self.lr,
            betas=(self.beta1, self.beta2),
            eps=self.eps,
            **self.kernel_options(model),
        )


@register_optimizer("adamw")
@dataclass(frozen=True)
class AdamW(_AdamFamily):
    """AdamW: Adam with weight decay decoupled from the gradient."""

    weight_decay: float = 0.01
    """Decoupled weight decay coefficient."""

    def build(self, model):
        import torch

        return torch.optim.AdamW(
            self.param_groups(model),
            lr=self.lr,
            betas=(self.beta1, self.beta2),
            eps=self.eps,
            **self.kernel_options(model),
        )
