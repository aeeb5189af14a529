from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from toolbox.datasets import SEED_LIMIT
from toolbox.errors import UserError
from toolbox.models import ModelConfig, register_model


@register_model("trajectory_recovery")
@dataclass(frozen=True)
class TrajectoryRecoveryConfig(ModelConfig):
    """Recovers hidden points of GPS tracks (--dataset trajectories): a small transformer
    encoder predicts the points each step hides; logs their mean error in metres."""

    own_steps = True
    default_metrics = ()  # its steps report the error in metres; no prediction to score

    width: int = 64
    """Features per point inside the transformer (its model dimension)."""
    depth: int = 2
    """Number of transformer layers (self-attention and MLP, each pre-norm residual)."""
    heads: int = 4
    """Attention heads per layer; must divide --model.width."""
    mlp_ratio: int = 4
    """Hidden features of each layer's MLP, as a multiple of --model.width."""
    positions: Literal["rotary", "sinusoidal", "learned"] = "rotary"
    """Encoding of each point's index: rotary in attention, or sinusoidal or learned, added."""
    mask_fraction: float = 0.3
    """Fraction of each trajectory's valid points hidden per step, in (0, 1); never its ends."""
    dropout: float = 0.0
    """Dropout of attention weights and of each residual branch, in [0, 1)."""
    eval_seed: int = 0
    """Seed of the points hidden in evaluation: the same points at every evaluation."""

    def problems(self) -> list[str]:
        found = super().problems() + self.not_positive("width", "depth", "heads", "mlp_ratio")
        found += self.not_probability("dropout")
        sizes_positive = self.width > 0 and self.heads > 0
        if sizes_positive and self.width % self.heads:
            found.append(
                f"--model.width is {self.width}, not divisible by --model.heads {self.heads}; "
                "each head takes width / heads features (an even number for --model.positions "
                f"rotary), so use e.g. --model.width {self.suggested_width()}."
            )
        elif self.positions == "rotary" and sizes_positive and (self.width // self.heads) % 2:
            found.append(
                f"--model.width {self.width} / --model.heads {self.heads} is "
                f"{self.width // self.heads} features per head; --model.positions rotary "
                "rotates them in pairs, so make it even (e.g. --model.width "
                f"{self.suggested_width()}) or use --model.positions sinusoidal."
            )
        elif self.positions == "sinusoidal" and sizes_positive and self.width % 2:
            found.append(
                f"--model.width is {self.width}; --model.positions sinusoidal needs an even "
                "width (sine and cosine pairs): use an even width or --model.positions learned."
            )
        if not 0.0 < self.mask_fraction < 1.0:
            found.append(
                f"--model.mask-fraction is {self.mask_fraction}; it must be in (0, 1), the "
                "fraction of each trajectory's points to hide (e.g. 0.3)."
            )
        if not 0 <= self.eval_seed < SEED_LIMIT:
            found.append(
                f"--model.eval-seed is {self.eval_seed}; give a seed in [0, 2**63), e.g. 0."
            )
        return found

    def suggested_width(self) -> int:
        """The multiple of 2 * heads nearest to width: an even number of features per head."""
        return 2 * self.heads * max(1, round(self.width / (2 * self.heads)))

    def build(self, info):
        from toolbox.models.trajectory.network import TrajectoryRecovery

        if len(info.input_shape) != 2 or info.input_shape[1] != 2:
            raise UserError(
                f"--arch {self.registered_name} needs trajectory inputs of shape (length, 2) "
                f"as (lon, lat) degrees, but this dataset's inputs have shape "
                f"{tuple(info.input_shape)}; use --dataset trajectories."
            )
        return TrajectoryRecovery(
            max_length=info.input_shape[0],
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            positions=self.positions,
            mask_fraction=self.mask_fraction,
            dropout=self.dropout,
            eval_seed=self.eval_seed,
        )
