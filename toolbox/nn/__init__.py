"""Reusable neural-network building blocks: conv and MLP blocks, positional encodings,
patches, attention, squeeze-and-excitation, shape layers, containers and losses."""

from toolbox.nn.activations import ACTIVATIONS, make_activation
from toolbox.nn.attention import MultiHeadCrossAttention, MultiHeadSelfAttention
from toolbox.nn.containers import MultiSequential, Residual
from toolbox.nn.conv import ChannelLayerNorm, ConvBlock1d, ConvBlock2d
from toolbox.nn.losses import MaskedLoss, RMSELoss, SequenceLoss
from toolbox.nn.mlp import MLP
from toolbox.nn.patches import (
    Patchify1d,
    Patchify2d,
    Unpatchify1d,
    Unpatchify2d,
    patchify_1d,
    patchify_2d,
    unpatchify_1d,
    unpatchify_2d,
)
from toolbox.nn.positional import (
    ConcatSinusoidalPositionalEncoding,
    LearnedPositionalEncoding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)
from toolbox.nn.shape import Permute, PrintShape, Reshape, Transpose
from toolbox.nn.squeeze_excite import SqueezeExcitation1d, SqueezeExcitation2d

__all__ = [
    "ACTIVATIONS",
    "ChannelLayerNorm",
    "ConcatSinusoidalPositionalEncoding",
    "ConvBlock1d",
    "ConvBlock2d",
    "LearnedPositionalEncoding",
    "MLP",
    "MaskedLoss",
    "MultiHeadCrossAttention",
    "MultiHeadSelfAttention",
    "MultiSequential",
    "Patchify1d",
    "Patchify2d",
    "Permute",
    "PrintShape",
    "RMSELoss",
    "Reshape",
    "Residual",
    "RotaryEmbedding",
    "SequenceLoss",
    "SinusoidalPositionalEncoding",
    "SqueezeExcitation1d",
    "SqueezeExcitation2d",
    "Transpose",
    "Unpatchify1d",
    "Unpatchify2d",
    "make_activation",
    "patchify_1d",
    "patchify_2d",
    "sinusoidal_table",
    "unpatchify_1d",
    "unpatchify_2d",
]
