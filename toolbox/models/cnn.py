from __future__ import annotations

from dataclasses import dataclass

from toolbox.models import ModelConfig, register_model


@register_model("cnn")
@dataclass(frozen=True)
class CNN(ModelConfig):
    """A LeNet-style convnet: two conv-ReLU-pool stages, then two linear layers."""

    channels: tuple[int, int] = (32, 64)
    """Output channels of the two convolution stages."""
    hidden_size: int = 128
    """Width of the hidden linear layer, in units."""
    dropout: float = 0.25
    """Dropout probability before each linear layer, in [0, 1)."""

    def problems(self) -> list[str]:
        found = super().problems() + self.not_positive("hidden_size")
        found += self.not_probability("dropout")
        if min(self.channels) <= 0:
            found.append(
                f"--model.channels is {list(self.channels)}; both must be positive "
                "(e.g. --model.channels 32 64)."
            )
        return found

    def build(self, info):
        from torch import nn

        from toolbox.nn import MLP

        in_channels, _, _ = self.image_shape(info)
        first, second = self.channels
        # Plain conv-ReLU layers, not toolbox.nn.ConvBlock2d: without a norm the block adds
        # nothing but a level of nesting, which would rename every conv's keys (0.weight ->
        # 0.conv.weight) and break resuming cnn runs saved before.
        return nn.Sequential(
            nn.Conv2d(in_channels, first, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            # Pooling to a fixed 4x4 grid lets one config serve 8, 28 and 32 px inputs.
            nn.AdaptiveMaxPool2d(4),
            nn.Flatten(),
            nn.Dropout(self.dropout),
            # linear, ReLU, dropout, linear; spliced in rather than nested, so that the keys
            # stay 8.weight ... 11.bias, as in earlier cnn checkpoints.
            *MLP(second * 16, [self.hidden_size], info.num_outputs, dropout=self.dropout),
        )
