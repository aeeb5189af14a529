"""Models: each registered config builds an ``nn.Module`` for the dataset it is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from toolbox.component import Component
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
