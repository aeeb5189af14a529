from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.errors import UserError
from toolbox.models import ModelConfig, register_model


@register_model("vit_tiny")
@dataclass(frozen=True)
class ViTTiny(ModelConfig):
    """A small Vision Transformer for small images (pre-norm encoder, class token)."""

    patch_size: int = 4
    """Side of the square patches, in pixels; must divide the image height and width."""
    embed_dim: int = 192
    """Width of the token embeddings."""
    depth: int = 6
    """Number of transformer encoder layers."""
    num_heads: int = 3
    """Attention heads per layer; must divide --model.embed-dim."""
    mlp_ratio: float = 2.0
    """Width of each layer's MLP, as a multiple of --model.embed-dim."""
    dropout: float = 0.0
    """Dropout probability in the encoder layers, in [0, 1)."""

    def problems(self) -> list[str]:
        found = super().problems()
        found += self.not_positive("patch_size", "embed_dim", "depth", "num_heads")
        if self.num_heads > 0 and self.embed_dim > 0 and self.embed_dim % self.num_heads:
            found.append(
                f"--model.embed-dim {self.embed_dim} is not divisible by --model.num-heads "
                f"{self.num_heads}; pick a head count that divides it (e.g. 3 for 192)."
            )
        # build() makes each MLP int(embed_dim * mlp_ratio) units wide: nan and inf cannot
        # be made an int, and a width of 0 leaves an MLP that outputs its bias only.
        mlp_dim = self.embed_dim * self.mlp_ratio
        if not 0 < self.mlp_ratio < math.inf or (
            self.embed_dim > 0 and not 1 <= mlp_dim < math.inf
        ):
            found.append(
                f"--model.mlp-ratio is {self.mlp_ratio}; give a positive, finite multiple of "
                f"--model.embed-dim {self.embed_dim} that leaves each MLP at least one unit "
                "wide (e.g. 2.0)."
            )
        return found + self.not_probability("dropout")

    def build(self, info):
        from toolbox.models.vit.network import VisionTransformer

        in_channels, height, width = self.image_shape(info)
        if height % self.patch_size or width % self.patch_size:
            raise UserError(
                f"--model.patch-size {self.patch_size} does not divide the {height}x{width} "
                f"images of this dataset; choose a divisor of both (e.g. 2 or 4)."
            )
        return VisionTransformer(
            in_channels=in_channels,
            num_patches=(height // self.patch_size) * (width // self.patch_size),
            num_classes=info.num_outputs,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=int(self.embed_dim * self.mlp_ratio),
            dropout=self.dropout,
        )
