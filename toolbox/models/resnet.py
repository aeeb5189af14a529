from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from toolbox.errors import UserError
from toolbox.models import ModelConfig, register_model

# Inputs up to this size get the small-image stem (3x3 stride-1 conv, no max-pool), which
# keeps a 32x32 image at 32x32 into the first stage instead of shrinking it to 8x8.
SMALL_IMAGE_MAX_SIZE = 64


@dataclass(frozen=True)
class _ResNet(ModelConfig):
    """torchvision's ResNet, with input channels and classes taken from the dataset."""

    torchvision_name: ClassVar[str]

    stem: Literal["auto", "small", "imagenet"] = "auto"
    """small: 3x3 stride-1 conv without max-pool (for 28 and 32 px images); imagenet: the
    7x7 stride-2 conv and max-pool; auto: small for inputs up to 64 px."""
    zero_init_residual: bool = False
    """Start each residual branch's last batch norm at zero (each block begins as identity)."""

    def build(self, info):
        import torchvision
        from torch import nn

        in_channels, height, width = self.image_shape(info)
        model = getattr(torchvision.models, self.torchvision_name)(
            weights=None,
            num_classes=info.num_outputs,
            zero_init_residual=self.zero_init_residual,
        )
        small = self.stem == "small" or (
            self.stem == "auto" and max(height, width) <= SMALL_IMAGE_MAX_SIZE
        )
        if small:
            model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        return model

    def named_weights(self, name: str) -> dict:
        """torchvision's weights ``name`` for this ResNet, from its cache (TORCH_HOME), or
        downloaded there."""
        from pathlib import Path

        import torch
        import torchvision

        choices = torchvision.models.get_model_weights(self.torchvision_name)
        if name not in choices.__members__:
            raise UserError(
                f"--model.weights {name!r} is neither a file nor one of torchvision's "
                f"{self.torchvision_name} weights ({', '.join(choices.__members__)}); give a "
                "weights file (a state_dict or a toolbox checkpoint) or one of those names."
            )
        weights = choices[name]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except OSError as error:  # offline (URLError is an OSError), or the cache unwritable
            raise UserError(
                f"--model.weights {name}: torchvision's {weights} are not in its cache and "
                f"could not be downloaded ({error}); download {weights.url} to {cached} "
                "(TORCH_HOME moves the cache), or give the path of a weights file."
            ) from None


@register_model("resnet18")
@dataclass(frozen=True)
class ResNet18(_ResNet):
    """ResNet-18 (11M parameters)."""

    torchvision_name = "resnet18"


@register_model("resnet34")
@dataclass(frozen=True)
class ResNet34(_ResNet):
    """ResNet-34 (21M parameters)."""

    torchvision_name = "resnet34"


@register_model("resnet50")
@dataclass(frozen=True)
class ResNet50(_ResNet):
    """ResNet-50 with bottleneck blocks (24M parameters)."""

    torchvision_name = "resnet50"
