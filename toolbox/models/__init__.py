"""Models: each registered config builds an ``nn.Module`` for the dataset it is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from toolbox.component import Component
from toolbox.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from toolbox.datasets import DatasetInfo


@dataclass(frozen=True)
class ModelConfig(Component):
    option_prefix = "--model."

    def build(self, info: DatasetInfo) -> nn.Module:
        """The model for inputs of ``info.input_shape`` and ``info.num_outputs`` outputs."""
        raise NotImplementedError


MODELS: Registry[ModelConfig] = Registry("model", __name__, ModelConfig, "--arch")
register_model = MODELS.register
