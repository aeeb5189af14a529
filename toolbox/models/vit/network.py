"""The torch side of vit_tiny, kept apart so that listing models does not import torch."""

import copy

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from toolbox.nn import MultiHeadSelfAttention


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attention(norm1(x)), then x + MLP(norm2(x)), the MLP
    linear1 -> GELU -> dropout -> linear2, each branch dropped out before it is added.

    It computes torch's nn.TransformerEncoderLayer(norm_first=True, activation="gelu"), which
    vit_tiny was built from, and keeps its parameter names (self_attn.in_proj_weight, linear1,
    norm1, ...), order and initialisation, so that vit_tiny checkpoints saved before load and
    resume, and a seeded build starts from the same weights. So its MLP is written out:
    toolbox.nn.MLP would hold linear1 and linear2 as mlp.0 and mlp.3.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadSelfAttention(dim, num_heads, dropout=dropout, packed=True)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x)))
        hidden = self.dropout(F.gelu(self.linear1(self.norm2(x))))
        return x + self.dropout2(self.linear2(hidden))


class Encoder(nn.Module):
    """``depth`` copies of one freshly initialised layer, as nn.TransformerEncoder makes them
    (under its keys, layers.<i>.*): the layers start equal and part as they train."""

    def __init__(self, layer: EncoderLayer, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class VisionTransformer(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_patches: int,
        num_classes: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        # A strided convolution: toolbox.nn.Patchify2d followed by a Linear layer computes the
        # same, but would hold this (D, C, p, p) kernel as a (D, C * p * p) matrix.
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Not toolbox.nn.LearnedPositionalEncoding, which would rename this (1, N + 1, D)
        # parameter position.embedding.weight and drop its leading 1.
        self.position = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        # Decaying these pulls them toward zero, which only erases what they encode.
        self.class_token.no_weight_decay = True
        self.position.no_weight_decay = True
        self.encoder = Encoder(EncoderLayer(embed_dim, num_heads, mlp_dim, dropout), depth)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        class_token = self.class_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        tokens = torch.cat([class_token, tokens], dim=1) + self.position  # (B, N + 1, D)
        return self.head(self.norm(self.encoder(tokens)[:, 0]))
