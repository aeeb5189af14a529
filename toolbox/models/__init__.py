"""Models: each registered config builds an ``nn.Module`` for the dataset it is given."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from toolbox.component import Component, free_on_resume
from toolbox.errors import UserError
from toolbox.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from toolbox.datasets import DatasetInfo


@dataclass(frozen=True)
class ModelConfig(Component):
    option_prefix = "--model."

    own_steps: ClassVar[bool] = False
    """Its module defines its own training and evaluation steps (see toolbox/steps.py), so
    --criterion is not used."""
    default_metrics: ClassVar[tuple[str, ...] | None] = None
    """--metrics of a run that picks this model (None: the usual default)."""
    options_on_resume = "fixed"  # a model's options shape its weights; those that change no
    # weight, such as a sampler's, are marked free_on_resume: test.py --model.* overrides them

    weights: str = free_on_resume("")
    """Weights a new run starts from: a state_dict or toolbox checkpoint file, or for
    torchvision's models one of its named weights (DEFAULT, IMAGENET1K_V1; read from
    torchvision's cache under TORCH_HOME, downloaded when online). Tensors of another shape
    (a small-image stem, a 1000-class head) are skipped and listed in the log. The inputs are
    still normalised with the dataset's own training-split mean and std."""
    freeze: Literal["none", "backbone"] = "none"
    """backbone: train only the head (the last layer with parameters), keeping the rest as
    loaded; none: train everything."""
    pretrained_lr_scale: float = 1.0
    """Learning rate of the tensors loaded from --model.weights, as a fraction of the
    --optim.lr schedule (e.g. 0.1); the others, such as a new head, follow it in full."""

    def problems(self) -> list[str]:
        found = super().problems()
        if not 0 < self.pretrained_lr_scale < math.inf:
            found.append(
                f"--model.pretrained-lr-scale is {self.pretrained_lr_scale}; give a positive "
                "fraction of --optim.lr, e.g. 0.1 (1: the same rate as the other layers)."
            )
        if self.pretrained_lr_scale != 1.0 and not self.weights:
            found.append(
                "--model.pretrained-lr-scale applies to the tensors loaded from "
                "--model.weights, which is not given; give --model.weights too, or drop it."
            )
        return found

    def named_weights(self, name: str) -> dict | None:
        """The state_dict that ``name`` (not a file) names for this model, or None where the
        model has no named weights (torchvision's models do)."""
        return None

    def head_prefix(self, model: nn.Module) -> str:
        """The name of the model's head: its last module holding parameters of its own."""
        owners = [name for name, module in model.named_modules() if module._parameters]
        return owners[-1] if owners else ""

    def build(self, info: DatasetInfo) -> nn.Module:
        """The model for inputs of ``info.input_shape`` and ``info.num_outputs`` outputs."""
        raise NotImplementedError

    def image_shape(self, info: DatasetInfo) -> tuple[int, int, int]:
        """(channels, height, width) of the inputs, or an error for a model that needs images."""
        if len(info.input_shape) != 3:
            raise UserError(
                f"--arch {self.registered_name} needs image inputs (channels, height, width), "
                f"but this dataset's inputs have shape {tuple(info.input_shape)}; use --arch mlp "
                "for vector inputs, or give --data.input-shape C H W."
            )
        return info.input_shape


MODELS: Registry[ModelConfig] = Registry("model", __name__, ModelConfig, "--arch")
register_model = MODELS.register
