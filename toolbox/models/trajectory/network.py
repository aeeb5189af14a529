"""The torch side of trajectory_recovery: hiding points, a local metric frame per trajectory,
and a transformer encoder that predicts the hidden points. Kept apart so that listing models
does not import torch.

Trajectories are (B, L, 2) (lon, lat) in degrees with ``lengths`` (B,) valid points each; the
positions at or past a trajectory's length are padding, which never reaches a valid point's
prediction, the loss or the error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from toolbox.models.steps import MAIN_LOSS, StepOutput
from toolbox.nn import (
    MLP,
    LearnedPositionalEncoding,
    MaskedLoss,
    MultiHeadSelfAttention,
    SinusoidalPositionalEncoding,
)
from toolbox.tasks.trajectory import EARTH_RADIUS_M, haversine

KM_PER_DEGREE = math.pi * EARTH_RADIUS_M / 180 / 1000
"""Kilometres per degree of latitude (and of longitude at the equator) on haversine's sphere."""
Positions = Literal["rotary", "sinusoidal", "learned"]
"""How the encoder knows each point's index: rotary (RoPE) in every attention, so that
attention sees how far apart two points are; or a sinusoidal or learned vector added to it."""
POINT_FEATURES = 3
"""What the encoder reads per point: east and north offsets in km, and 1 if it is hidden."""


def valid_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B, L) True at each trajectory's valid points, False at its padding."""
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]


def hide_points(
    lengths: torch.Tensor,
    max_length: int,
    fraction: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, L) True at the points to hide: ``fraction`` of each trajectory's valid points,
    rounded, at least one, drawn uniformly from the points between its first and last.

    The first and last points stay visible, so every hidden point lies between two visible
    ones; a trajectory of 2 points or fewer has nothing to hide. Draws from ``generator`` on
    the device of ``lengths`` (the global RNG when None).
    """
    positions = torch.arange(max_length, device=lengths.device)
    interior = (positions >= 1) & (positions < lengths[:, None] - 1)  # (B, L)
    counts = (fraction * lengths).round().long().clamp(min=1)
    counts = torch.minimum(counts, (lengths - 2).clamp(min=0))
    scores = torch.rand(lengths.shape[0], max_length, generator=generator, device=lengths.device)
    # Scores above any draw put the other points last, so the lowest `count` ranks of each row
    # are a uniform draw of `count` interior points (counts never exceed the interior's size).
    scores = torch.where(interior, scores, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


@dataclass
class LocalFrame:
    """Flat east-north coordinates in km around an origin per trajectory.

    A degree east is cos(latitude) shorter than a degree north; scaling longitudes by the
    cosine of the origin's latitude makes both axes kilometres, so that the encoder sees
    shapes undistorted and in units of order 1 whatever the city. Across the ~10 km of a city
    trajectory this flat frame is off by well under 0.1% (see toolbox.tasks.trajectory.rotate).
    """

    origin: torch.Tensor
    """(B, 1, 2) (lon, lat) in degrees."""
    cos_lat: torch.Tensor
    """(B, 1) cosine of the origin's latitude."""

    @classmethod
    def around(cls, track: torch.Tensor, visible: torch.Tensor) -> LocalFrame:
        """The frame centred on the mean of each trajectory's ``visible`` (B, L) points.

        Visible ones only: a centre that counted hidden points would tell the encoder where
        they are (their sum is the offsets of the visible ones, negated).
        """
        weights = visible[..., None].to(track.dtype)  # (B, L, 1)
        count = weights.sum(1, keepdim=True).clamp(min=1)
        # where, not a product: padding that holds nan must not reach the origin.
        origin = torch.where(visible[..., None], track, 0).sum(1, keepdim=True) / count
        return cls(origin, torch.cos(torch.deg2rad(origin[..., 1])))

    def to_km(self, track: torch.Tensor) -> torch.Tensor:
        """(B, L, 2) east and north offsets in km of points (B, L, 2) in degrees."""
        offsets = (track - self.origin) * KM_PER_DEGREE
        return torch.stack([offsets[..., 0] * self.cos_lat, offsets[..., 1]], dim=-1)

    def to_degrees(self, offsets: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_km``: (lon, lat) degrees of offsets (B, L, 2) in km."""
        east, north = offsets.unbind(-1)
        degrees = torch.stack([east / self.cos_lat, north], dim=-1) / KM_PER_DEGREE
        return self.origin + degrees


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: self-attention over the valid points, then an MLP, each
    added back through a residual."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: int, dropout: float, rotary: bool
    ) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = MultiHeadSelfAttention(width, heads, dropout=dropout, rotary=rotary)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = MLP(width, [mlp_ratio * width], width, activation="gelu", dropout=dropout)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + self.residual_dropout(self.attention(self.attention_norm(x), key_mask=valid))
        return x + self.residual_dropout(self.mlp(self.mlp_norm(x)))


class TrajectoryRecovery(nn.Module):
    """Predicts every point of trajectories whose hidden points are blanked out; defines its
    own steps (toolbox.models.steps).

    ``forward(track, lengths, hidden)`` returns the whole track (B, L, 2) in degrees as the
    encoder recovers it. Each trajectory is moved into its own ``LocalFrame`` (km around the
    mean of its visible points); the encoder reads (east, north, hidden flag) per point, with
    hidden points' offsets zeroed, and attends over valid points only. A batch brings
    ``input`` (B, L, 2) degrees (the dataset's normalisation is the identity), ``length`` (B,)
    (all points valid when absent) and ``target``, the true track in degrees.

    Steps hide ``mask_fraction`` of each trajectory's points (``hide_points``): training with
    the global RNG, evaluation with a generator seeded with ``eval_seed`` on every call, so
    that every evaluation of the same batches hides the same points and its losses compare
    across epochs (and leave the global RNG, hence a resumed run, untouched). Which points a
    trajectory hides depends on its place in its batch, so on the evaluation batch size.

    ``loss`` is the mean squared error in km^2 over all hidden points of the batch;
    ``error_m`` the great-circle distance in metres from each hidden point to its prediction,
    averaged per trajectory, then over the trajectories that hide a point (nan if none does).
    """

    loss_names = (MAIN_LOSS, "error_m")

    def __init__(
        self,
        max_length: int,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        positions: Positions = "rotary",
        mask_fraction: float = 0.3,
        dropout: float = 0.0,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_fraction < 1.0:
            raise ValueError(f"mask_fraction must be in (0, 1), got {mask_fraction}")
        self.max_length = max_length
        self.mask_fraction = mask_fraction
        self.eval_seed = eval_seed
        self.input_projection = nn.Linear(POINT_FEATURES, width)
        if positions == "learned":
            self.positional = LearnedPositionalEncoding(max_length, width)
            # Decay would pull positions toward zero, which only erases what they encode.
            self.positional.embedding.weight.no_weight_decay = True
        elif positions == "sinusoidal":
            self.positional = SinusoidalPositionalEncoding(width)
        elif positions == "rotary":  # in the attention of every layer instead
            self.positional = nn.Identity()
        else:
            raise ValueError(
                f"positions must be 'rotary', 'sinusoidal' or 'learned', got {positions!r}"
            )
        self.layers = nn.ModuleList(
            EncoderLayer(width, heads, mlp_ratio, dropout, rotary=positions == "rotary")
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)
        # Zero offsets put every hidden point at the centre of the visible ones: a fresh model
        # starts from that guess instead of from noise of the trunk's scale.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.loss = MaskedLoss("mse")

    def predict_offsets(
        self, offsets: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """Offsets (B, L, 2) in km of every point, from the visible ones of ``offsets``.

        ``valid`` and ``hidden`` are (B, L) bool; padded and hidden points' offsets are never
        read (they may hold anything, nan included).
        """
        visible = valid & ~hidden
        features = torch.cat(
            [torch.where(visible[..., None], offsets, 0), hidden[..., None].to(offsets.dtype)],
            dim=-1,
        )  # (B, L, 3)
        x = self.positional(self.input_projection(features))  # (B, L, width)
        for layer in self.layers:
            x = layer(x, valid)
        return self.head(self.norm(x))

    def forward(
        self, track: torch.Tensor, lengths: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        valid = valid_mask(lengths, track.shape[1])
        frame = LocalFrame.around(track, valid & ~hidden)
        return frame.to_degrees(self.predict_offsets(frame.to_km(track), valid, hidden).float())

    def training_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        losses, _ = self._step(batch, generator=None)
        return StepOutput(losses=losses)

    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        generator = torch.Generator(batch["input"].device).manual_seed(self.eval_seed)
        losses, sample_errors = self._step(batch, generator)
        return StepOutput(losses=losses, outputs={"error_m": sample_errors})

    def _step(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The named losses, and the mean error in metres of each trajectory (B,)."""
        track, target = batch["input"].float(), batch["target"].float()
        count, max_length = track.shape[:2]
        lengths = batch.get("length")
        if lengths is None:
            lengths = torch.full((count,), max_length, dtype=torch.long, device=track.device)
        valid = valid_mask(lengths, max_length)
        hidden = hide_points(lengths, max_length, self.mask_fraction, generator)

        frame = LocalFrame.around(track, valid & ~hidden)
        predicted = self.predict_offsets(frame.to_km(track), valid, hidden).float()
        loss = self.loss(predicted, frame.to_km(target), hidden[..., None])

        with torch.no_grad():  # a report in metres, not trained on
            errors = haversine(frame.to_degrees(predicted), target)  # (B, L)
            # 0 / 0 = nan for a trajectory that hides no point; nanmean leaves it out.
            sample_errors = torch.where(hidden, errors, 0).sum(1) / hidden.sum(1)
            error = sample_errors.nanmean()
        return {MAIN_LOSS: loss, "error_m": error}, sample_errors
