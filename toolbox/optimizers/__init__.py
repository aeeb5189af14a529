"""Optimizers: each registered config builds a torch optimizer over a model's parameters."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from toolbox.component import Component
from toolbox.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class OptimizerConfig(Component):
    option_prefix = "--optim."

    lr: float = 1e-3
    """Peak learning rate (schedulers scale it)."""
    weight_decay: float = 0.0
    """Weight decay coefficient (L2 penalty for sgd and adam, decoupled for adamw)."""
    decay_norm_and_bias: bool = False
    """Also decay biases, norm weights and embeddings marked no_weight_decay (off: usual)."""

    def problems(self) -> list[str]:
        found = []
        # Chained comparisons also catch nan; an infinite value makes every weight inf or
        # nan at the first step.
        if not 0 < self.lr < math.inf:
            found.append(f"--optim.lr is {self.lr}; it must be positive and finite (e.g. 1e-3).")
        if not 0 <= self.weight_decay < math.inf:
            found.append(
                f"--optim.weight-decay is {self.weight_decay}; it must be finite and >= 0 "
                "(e.g. 0.01; 0: no decay)."
            )
        return found

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Two groups: matrices and conv kernels decay; biases, norm weights (1-D) and
        parameters a model marks ``no_weight_decay`` (a ViT's tokens and positions) don't.
        Parameters marked with an ``lr_scale`` (pretrained ones, --model.pretrained-lr-scale)
        get groups of their own at that fraction of the rate, after the others: the first
        group's rate is the one logged."""
        params = [p for p in model.parameters() if p.requires_grad]
        if self.decay_norm_and_bias:
            groups = [{"params": params, "weight_decay": self.weight_decay}]
        else:

            def decays(param) -> bool:
                return param.ndim >= 2 and not getattr(param, "no_weight_decay", False)

            groups = [
                {"params": [p for p in params if decays(p)], "weight_decay": self.weight_decay},
                {"params": [p for p in params if not decays(p)], "weight_decay": 0.0},
            ]
        scales = sorted({getattr(p, "lr_scale", 1.0) for p in params} - {1.0})
        if not scales:
            return groups
        split = []
        for scale in (1.0, *scales):
            for group in groups:
                chosen = [p for p in group["params"] if getattr(p, "lr_scale", 1.0) == scale]
                if chosen:
                    lr = {} if scale == 1.0 else {"lr": self.lr * scale}
                    split.append({**group, "params": chosen, **lr})
        return split

    def kernel_options(self, model: nn.Module) -> dict[str, bool]:
        """Fused kernels (one per step for all parameters) where torch has them: about 20%
        faster per step than the default on a small MLP on CPU."""
        devices = {p.device.type for p in model.parameters()}
        floating = all(p.is_floating_point() for p in model.parameters())
        return {"fused": True} if floating and devices <= {"cpu", "cuda"} else {}

    def build(self, model: nn.Module | ParameterSet) -> torch.optim.Optimizer:
        """An optimizer over the model's trainable parameters (or a ParameterSet's)."""
        raise NotImplementedError


class ParameterSet:
    """Some of a model's parameters, which an optimizer config builds over as over a model
    (it reads ``parameters()`` only): one of the optimizers a model declares."""

    def __init__(self, parameters: Iterable[nn.Parameter]) -> None:
        self._parameters = list(parameters)

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self._parameters)


OPTIMIZERS: Registry[OptimizerConfig] = Registry(
    "optimizer", __name__, OptimizerConfig, "--optimizer"
)
register_optimizer = OPTIMIZERS.register
