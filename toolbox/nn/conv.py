"""Convolution blocks (conv, norm, activation) over 1D sequences and 2D images."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from toolbox.nn._checks import check_choice, check_positive
from toolbox.nn.activations import ActivationName, make_activation

NormName = Literal["none", "batch", "group", "instance", "layer"]
NORMS = ("none", "batch", "group", "instance", "layer")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of (B, C, *spatial) inputs, at each position (as in ConvNeXt)."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def make_conv_norm(name: NormName, num_channels: int, dims: int, num_groups: int) -> nn.Module:
    """A norm layer for (B, num_channels, *spatial) inputs with ``dims`` spatial dimensions."""
    check_choice("norm", name, NORMS)
    if name == "batch":
        return nn.BatchNorm1d(num_channels) if dims == 1 else nn.BatchNorm2d(num_channels)
    if name == "group":
        if num_channels % num_groups:
            raise ValueError(
                f"norm='group' needs the normalized channels ({num_channels}) to be divisible "
                f"by num_groups ({num_groups})"
            )
        return nn.GroupNorm(num_groups, num_channels)
    if name == "instance":
        instance_norm = nn.InstanceNorm1d if dims == 1 else nn.InstanceNorm2d
        return instance_norm(num_channels, affine=True)
    if name == "layer":
        return ChannelLayerNorm(num_channels)
    return nn.Identity()


class _ConvBlock(nn.Module):
    """The body of ConvBlock1d and ConvBlock2d; ``dims`` is the number of spatial dims."""

    dims: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: NormName = "batch",
        activation: ActivationName = "relu",
        order: Literal["post", "pre"] = "post",
        num_groups: int = 8,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        for name, value in [
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("kernel_size", kernel_size),
            ("stride", stride),
            ("dilation", dilation),
            ("groups", groups),
            ("num_groups", num_groups),
        ]:
            check_positive(name, value)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        check_choice("order", order, ("post", "pre"))
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = order == "pre" or norm == "none"
        self.order = order

        conv = nn.Conv1d if self.dims == 1 else nn.Conv2d
        self.conv = conv(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        norm_channels = in_channels if order == "pre" else out_channels
        self.norm = make_conv_norm(norm, norm_channels, self.dims, num_groups)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "pre":
            return self.conv(self.act(self.norm(x)))
        return self.act(self.norm(self.conv(x)))


class ConvBlock1d(_ConvBlock):
    """Conv1d, norm and activation over (B, C, L) sequences; options as in :class:`ConvBlock2d`."""

    dims = 1


class ConvBlock2d(_ConvBlock):
    """Conv2d, norm and activation over (B, C, H, W) images.

    ``order="post"`` is conv -> norm -> act; ``order="pre"`` is norm -> act -> conv, as in
    pre-activation ResNets, so the norm then sees ``in_channels``. ``padding=None`` keeps the
    size for odd kernels at stride 1. ``bias=None`` drops the conv bias where a norm right after
    the conv would cancel it (post order with a norm). ``norm="layer"`` normalizes over the
    channels at each position; ``"group"`` uses ``num_groups`` groups.
    """

    dims = 2
