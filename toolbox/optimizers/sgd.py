from __future__ import annotations

from dataclasses import dataclass

from toolbox.optimizers import OptimizerConfig, register_optimizer


@register_optimizer("sgd")
@dataclass(frozen=True)
class SGD(OptimizerConfig):
    """Stochastic gradient descent with momentum."""

    lr: float = 0.1
    """Peak learning rate (schedulers scale it)."""
    weight_decay: float = 5e-4
    """L2 penalty coefficient."""
    momentum: float = 0.9
    """Momentum factor, in [0, 1)."""
    nesterov: bool = True
    """Use Nesterov momentum (needs a positive --optim.momentum)."""

    def problems(self) -> list[str]:
        found = super().problems()
        found += self.not_probability("momentum")
        if self.nesterov and self.momentum <= 0:
            found.append(
                "--optim.nesterov needs a positive --optim.momentum; "
                "set --optim.momentum 0.9 or pass --optim.no-nesterov."
            )
        return found

    def build(self, model):
        import torch

        return torch.optim.SGD(
            self.param_groups(model),
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            **self.kernel_options(model),
        )
