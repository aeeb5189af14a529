"""The torch side of vit_tiny, kept apart so that listing models does not import torch."""

import torch
from torch import nn


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
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.position = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        # Decaying these pulls them toward zero, which only erases what they encode.
        self.class_token.no_weight_decay = True
        self.position.no_weight_decay = True
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            num_heads,
            mlp_dim,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        class_token = self.class_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        tokens = torch.cat([class_token, tokens], dim=1) + self.position  # (B, N + 1, D)
        return self.head(self.norm(self.encoder(tokens)[:, 0]))
