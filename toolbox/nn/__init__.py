"""Reusable neural-network building blocks: conv and MLP blocks, positional encodings,
patches, attention, squeeze-and-excitation, shape layers, containers and losses.

The built-in models build from MLP (mlp, cnn, ddpm's time MLP, trajectory_recovery),
MultiHeadSelfAttention (vit_tiny, packed as torch's; trajectory_recovery), sinusoidal_embedding
(ddpm's timesteps), SinusoidalPositionalEncoding, LearnedPositionalEncoding and MaskedLoss
(trajectory_recovery); examples/01_custom_model.py from Residual. The blocks themselves build
from ACTIVATIONS, make_activation, ChannelLayerNorm, RotaryEmbedding, sinusoidal_table and
the patchify functions.

Kept for the models users write, though no built-in model uses them (each is tested in
tests/test_nn.py, against torch's own layer or a hand-written reference):

- ConvBlock1d, ConvBlock2d: conv, any norm and activation, pre or post order; cnn and ddpm
  keep their convs as plain layers for their checkpoints' keys.
- MultiHeadCrossAttention: queries attending to a context (encoder-decoder, conditioning).
- ConcatSinusoidalPositionalEncoding: positions appended as features, leaving inputs as given.
- Patchify1d, Patchify2d, Unpatchify1d, Unpatchify2d: patches as tokens and back (PatchTST,
  masked autoencoders); vit_tiny embeds its patches with the equivalent strided conv.
- SqueezeExcitation1d, SqueezeExcitation2d: channel gating for conv nets (SE-ResNet).
- Transpose, Permute, Reshape: shape changes between layers of an nn.Sequential.
- PrintShape: prints the shapes passing through, to debug a Sequential.
- MultiSequential: an nn.Sequential whose modules take and return several tensors.
- SequenceLoss: a per-step loss over padded batches, averaged over the valid steps.
- RMSELoss: the RMSE as a loss, in target units, with a finite gradient at zero error.
"""

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
    sinusoidal_embedding,
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
    "sinusoidal_embedding",
    "sinusoidal_table",
    "unpatchify_1d",
    "unpatchify_2d",
]
