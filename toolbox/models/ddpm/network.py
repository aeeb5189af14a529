"""The torch side of the ddpm model: a small U-Net, the Gaussian diffusion maths, and the module
that trains and samples with them. Kept apart so that listing models does not import torch.

Timesteps are 0-based: t = 0 is the first noising step (t = 1 in Ho et al. 2020) and t = T - 1
the last. Images are in the units the model sees (normalised by the dataset's mean and std),
unless a name says pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision.utils import make_grid

from toolbox.models.steps import MAIN_LOSS, StepOutput
from toolbox.nn import MLP, sinusoidal_embedding

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(noisy images (B, C, H, W), timesteps (B,)) -> the noise it predicts in them (B, C, H, W)."""
ClipRange = tuple[torch.Tensor | float, torch.Tensor | float]
"""Lowest and highest value of clean images, floats or per-channel tensors (C, 1, 1)."""


# The convolutions and attention below are written out rather than built from toolbox.nn's
# ConvBlock2d (norm="group", activation="silu", order="pre" is each norm-SiLU-conv here) and
# MultiHeadSelfAttention (one head of it is SelfAttention's maths): those blocks hold their
# weights under other names and shapes (block.norm.*, block.conv.*; q_proj.weight (C, C) and
# the like, not this 1x1 conv's qkv.weight (3C, C, 1, 1)), so building from them would rename
# the keys of every ddpm checkpoint and leave the runs saved before unable to resume.


class ResidualBlock(nn.Module):
    """GroupNorm, SiLU, conv, twice, with the timestep's features added in between (as DDPM)."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        hidden = self.conv1(F.silu(self.norm1(x)))
        hidden = hidden + self.time(time)[:, :, None, None]
        hidden = self.conv2(F.silu(self.norm2(hidden)))
        return hidden + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the positions of a feature map, with a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)  # (B, H*W, 3C)
        attended = F.scaled_dot_product_attention(*tokens.chunk(3, dim=2))  # (B, H*W, C)
        return x + self.proj(attended.transpose(1, 2).reshape(batch, channels, height, width))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        # Resizing to the skip's size, not by 2, undoes a stride-2 conv on odd sizes (7 -> 4).
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """Predicts the noise in images (B, C, H, W) at timesteps (B,), for any image size.

    Level i has ``base_channels * channel_multipliers[i]`` channels; each level but the last
    halves the resolution (28 -> 14 -> 7 with the default three), and the last holds the
    middle blocks, with self-attention if ``attention``. Every width must be a multiple of
    ``norm_groups``.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 32,
        channel_multipliers: Sequence[int] = (1, 2, 2),
        attention: bool = True,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        if base_channels % norm_groups or base_channels % 2:
            raise ValueError(
                f"base_channels must be an even multiple of norm_groups ({norm_groups}), "
                f"got {base_channels}"
            )
        if len(channel_multipliers) < 2:
            raise ValueError(
                f"channel_multipliers needs two levels or more, got {channel_multipliers}"
            )
        self.base_channels = base_channels
        time_dim = 4 * base_channels
        widths = [base_channels * multiplier for multiplier in channel_multipliers]
        # An nn.Sequential of linear, SiLU, linear: keys time_mlp.0.* and time_mlp.2.*.
        self.time_mlp = MLP(base_channels, [time_dim], time_dim, activation="silu")
        self.input = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for level, width in enumerate(widths[:-1]):
            previous = widths[max(level - 1, 0)]
            self.down_blocks.append(ResidualBlock(previous, width, time_dim, norm_groups))
            self.downsamples.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle_in = ResidualBlock(widths[-2], widths[-1], time_dim, norm_groups)
        self.attention = SelfAttention(widths[-1], norm_groups) if attention else nn.Identity()
        self.middle_out = ResidualBlock(widths[-1], widths[-1], time_dim, norm_groups)
        self.upsamples = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        previous = widths[-1]
        for width in reversed(widths[:-1]):
            self.upsamples.append(Upsample(previous))
            # The block sees the upsampled features and the encoder's skip, concatenated.
            self.up_blocks.append(ResidualBlock(previous + width, width, time_dim, norm_groups))
            previous = width
        self.output = nn.Sequential(
            nn.GroupNorm(norm_groups, widths[0]),
            nn.SiLU(),
            nn.Conv2d(widths[0], in_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        # Sines first, then cosines: the columns of time_mlp.0.weight in ddpm checkpoints.
        embedding = sinusoidal_embedding(timesteps, self.base_channels, interleave=False)
        time = F.silu(self.time_mlp(embedding))  # (B, 4 * base_channels)
        hidden = self.input(x)
        skips = []
        for block, downsample in zip(self.down_blocks, self.downsamples, strict=True):
            hidden = block(hidden, time)
            skips.append(hidden)
            hidden = downsample(hidden)
        hidden = self.middle_out(self.attention(self.middle_in(hidden, time)), time)
        for upsample, block in zip(self.upsamples, self.up_blocks, strict=True):
            skip = skips.pop()
            hidden = block(torch.cat([upsample(hidden, skip.shape[-2:]), skip], dim=1), time)
        return self.output(hidden)


BetaSchedule = Literal["linear", "cosine"]


def beta_schedule(name: BetaSchedule, timesteps: int) -> torch.Tensor:
    """The betas (T,) in float64, each capped at 0.999 so that no step erases the image."""
    if name == "linear":
        # Ho et al.'s 1e-4..0.02 at T = 1000, scaled by 1000 / T so that other T end as close
        # to pure noise (Nichol & Dhariwal 2021).
        scale = 1000 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
        return betas.clamp(max=0.999)
    if name == "cosine":
        # alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) * pi / 2), s = 0.008.
        fractions = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((fractions + 0.008) / 1.008 * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ValueError(f"beta schedule must be 'linear' or 'cosine', got {name!r}")


class GaussianDiffusion(nn.Module):
    """The noising process q(x_t | x_0) of T steps, its training loss and two samplers.

    It holds only the schedule (as buffers, so that it moves with its parent module); the
    denoiser is an argument of each method, so any callable (B, C, H, W), (B,) -> noise
    serves, an exact one included.
    """

    def __init__(self, timesteps: int = 1000, schedule: BetaSchedule = "linear") -> None:
        super().__init__()
        betas = beta_schedule(schedule, timesteps)
        # Derived from the config, so not saved: checkpoints hold only the network.
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer(
            "alphas_cumprod", torch.cumprod(1 - betas, dim=0).float(), persistent=False
        )

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, for timesteps t (B,)."""
        alpha_bar = self.alphas_cumprod[t].view(-1, *[1] * (x0.dim() - 1))
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def noise_prediction_loss(
        self, denoiser: Denoiser, x0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM's simple loss: per-sample MSE (B,) of the predicted noise, and its timesteps (B,).

        t is uniform over the T steps and the noise standard normal, both from the global RNG.
        """
        t = torch.randint(self.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        predicted = denoiser(self.q_sample(x0, t, noise), t)
        return (predicted.float() - noise).pow(2).flatten(1).mean(dim=1), t

    def respaced_timesteps(self, steps: int) -> torch.Tensor:
        """``steps`` timesteps evenly spaced from T - 1 down to 0 (T - 1 alone for one step)."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in 1..{self.timesteps}, got {steps}")
        spaced = torch.linspace(self.timesteps - 1, 0, steps, device=self.betas.device)
        return spaced.round().long()

    def _predict_x0(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        t: torch.Tensor,
        alpha_bar: torch.Tensor,
        clip_range: ClipRange | None,
    ) -> torch.Tensor:
        noise = denoiser(x, t.expand(x.shape[0])).float()
        x0 = (x - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
        return x0 if clip_range is None else x0.clamp(*clip_range)

    def _schedule_of(self, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The timesteps walked, alpha_bar at each, and at the next one (1 after the last)."""
        timesteps = self.respaced_timesteps(steps)
        alphas_cumprod = self.alphas_cumprod[timesteps]
        previous = torch.cat([alphas_cumprod[1:], alphas_cumprod.new_ones(1)])
        return timesteps, alphas_cumprod, previous

    @torch.no_grad()
    def ddpm_sample(
        self,
        denoiser: Denoiser,
        shape: Sequence[int],
        steps: int,
        clip_range: ClipRange | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling (Ho et al. 2020, Algorithm 2) with the posterior variance beta~.

        With steps < T it walks ``respaced_timesteps(steps)``, each step's beta recomputed
        from the alpha_bar of its two ends (respacing, Nichol & Dhariwal 2021); with steps = T
        that is Algorithm 2 exactly. The predicted x_0 is clipped to ``clip_range``.
        """
        device = self.betas.device
        x = torch.randn(*shape, generator=generator, device=device)
        timesteps, alphas_cumprod, previous = self._schedule_of(steps)
        for index, t in enumerate(timesteps):
            alpha_bar, alpha_bar_prev = alphas_cumprod[index], previous[index]
            beta = 1 - alpha_bar / alpha_bar_prev
            x0 = self._predict_x0(denoiser, x, t, alpha_bar, clip_range)
            # The mean of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7).
            mean = (
                alpha_bar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - alpha_bar_prev) * x
            ) / (1 - alpha_bar)
            if index + 1 < steps:
                variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
                noise = torch.randn(*shape, generator=generator, device=device)
                x = mean + variance.sqrt() * noise
            else:
                x = mean  # the last step returns the mean, as Algorithm 2 does
        return x

    @torch.no_grad()
    def ddim_sample(
        self,
        denoiser: Denoiser,
        shape: Sequence[int],
        steps: int,
        eta: float = 0.0,
        clip_range: ClipRange | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDIM sampling (Song et al. 2021, eq. 12) over ``respaced_timesteps(steps)``.

        eta = 0 is deterministic given the starting noise; eta = 1 has DDPM's variance, and then
        draws the same noise as ``ddpm_sample`` and returns the same images. The predicted x_0 is
        clipped to ``clip_range`` and the noise re-derived from it, as in guided-diffusion.
        """
        device = self.betas.device
        x = torch.randn(*shape, generator=generator, device=device)
        timesteps, alphas_cumprod, previous = self._schedule_of(steps)
        for index, t in enumerate(timesteps):
            alpha_bar, alpha_bar_prev = alphas_cumprod[index], previous[index]
            x0 = self._predict_x0(denoiser, x, t, alpha_bar, clip_range)
            noise = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
            sigma = (
                eta
                * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
            )
            direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * noise
            x = alpha_bar_prev.sqrt() * x0 + direction
            # sigma is 0 at the last step; skipping the draw there keeps step with ddpm_sample.
            if eta > 0 and index + 1 < steps:
                x = x + sigma * torch.randn(*shape, generator=generator, device=device)
        return x


class DDPM(nn.Module):
    """A denoising diffusion model on images that defines its own steps (toolbox.models.steps).

    ``forward(noisy, timesteps)`` is the denoiser: it returns the noise (B, C, H, W) that the
    U-Net predicts in ``noisy`` (B, C, H, W) at ``timesteps`` (B,). ``mean`` and ``std`` are the
    dataset's per-channel statistics in stored units, and ``pixel_range`` the lowest and
    highest stored value (0 and 255 for 8-bit images): samples are clipped to that range and
    drawn in figures() with it mapped to [0, 1].
    """

    def __init__(
        self,
        unet: UNet,
        diffusion: GaussianDiffusion,
        image_shape: tuple[int, int, int],
        mean: Sequence[float],
        std: Sequence[float],
        pixel_range: tuple[float, float] = (0.0, 255.0),
        sampler: Literal["ddpm", "ddim"] = "ddim",
        sample_steps: int = 50,
        ddim_eta: float = 0.0,
        num_samples: int = 64,
        sample_seed: int = 0,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.diffusion = diffusion
        self.image_shape = tuple(image_shape)
        self.pixel_range = pixel_range
        self.sampler = sampler
        self.sample_steps = sample_steps
        self.ddim_eta = ddim_eta
        self.num_samples = num_samples
        self.sample_seed = sample_seed
        # (C or 1, 1, 1), to broadcast over (B, C, H, W); dataset facts, so not saved.
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    loss_names = (MAIN_LOSS,)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps)

    def training_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        loss, _ = self.diffusion.noise_prediction_loss(self, batch["input"])
        return StepOutput(losses={MAIN_LOSS: loss.mean()})

    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        loss, timesteps = self.diffusion.noise_prediction_loss(self, batch["input"])
        return StepOutput(
            losses={MAIN_LOSS: loss.mean()}, outputs={MAIN_LOSS: loss, "timestep": timesteps}
        )

    def clip_range(self) -> ClipRange:
        """The range of clean images in model units, per channel (C or 1, 1, 1)."""
        low, high = self.pixel_range
        return (low - self.mean) / self.std, (high - self.mean) / self.std

    def to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Images in model units mapped to [0, 1], pixel_range's ends going to 0 and 1."""
        low, high = self.pixel_range
        return ((images * self.std + self.mean - low) / (high - low)).clamp(0, 1)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (num_samples, C, H, W) in model units, from the configured sampler."""
        shape = (num_samples, *self.image_shape)
        if self.sampler == "ddpm":
            return self.diffusion.ddpm_sample(
                self, shape, self.sample_steps, self.clip_range(), generator
            )
        return self.diffusion.ddim_sample(
            self, shape, self.sample_steps, self.ddim_eta, self.clip_range(), generator
        )

    @torch.no_grad()
    def figures(self) -> dict[str, torch.Tensor]:
        """A grid (3, H', W') in [0, 1] of ``num_samples`` samples, 8 per row.

        The same seeded noise every call, so that grids compare across epochs; the global RNG
        is forked, so that drawing them leaves training (and its resume) as it would be.
        """
        device = self.mean.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            generator = torch.Generator(device).manual_seed(self.sample_seed)
            images = self.sample(self.num_samples, generator)
        return {"samples": make_grid(self.to_unit_range(images), nrow=8)}
