from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from toolbox.component import free_on_resume
from toolbox.errors import UserError
from toolbox.models import ModelConfig, register_model

NORM_GROUPS = 8
"""GroupNorm groups in the U-Net; every width there is a multiple of --model.base-channels."""


@register_model("ddpm")
@dataclass(frozen=True)
class DDPMConfig(ModelConfig):
    """A denoising diffusion model (Ho et al. 2020): a small U-Net learns to predict the noise
    added to images, and each evaluation draws a grid of samples."""

    own_steps = True
    default_metrics = ()  # its evaluation scores the denoising loss; no predictions

    base_channels: int = 32
    """Channels of the U-Net's full-resolution level (doubled below it); a multiple of 8."""
    attention: bool = True
    """Self-attention at the U-Net's lowest resolution (7x7 for 28 px images)."""
    timesteps: int = 1000
    """Number of noising steps T of the diffusion process."""
    beta_schedule: Literal["linear", "cosine"] = "linear"
    """Noise schedule: linear (Ho et al., 1e-4 to 0.02 at T = 1000) or cosine (Nichol et al.)."""
    sampler: Literal["ddpm", "ddim"] = free_on_resume("ddim")
    """Sampler of the grids: ddpm (ancestral) or ddim (Song et al.; see --model.ddim-eta)."""
    sample_steps: int = free_on_resume(50)
    """Denoising steps per sample, evenly spaced over the T timesteps; in 1..--model.timesteps."""
    ddim_eta: float = free_on_resume(0.0)
    """Noise of the ddim sampler, in [0, 1]: 0 deterministic, 1 the variance of ddpm."""
    num_samples: int = free_on_resume(64)
    """Samples in the grid that each evaluation draws, 8 per row."""
    pixel_range: tuple[float, float] | None = None
    """Stored values of black and white, to which samples are clipped (None: the dataset's, e.g.
    0 255 for 8-bit images, 0 16 for digits)."""

    def problems(self) -> list[str]:
        found = super().problems()
        found += self.not_positive("base_channels", "timesteps", "sample_steps", "num_samples")
        if self.base_channels > 0 and self.base_channels % NORM_GROUPS:
            found.append(
                f"--model.base-channels is {self.base_channels}; it must be a multiple of "
                f"{NORM_GROUPS}, the U-Net's GroupNorm groups (e.g. 32)."
            )
        if self.timesteps > 0 and self.sample_steps > self.timesteps:
            found.append(
                f"--model.sample-steps is {self.sample_steps}; sampling walks a subset of the "
                f"{self.timesteps} timesteps, so it must be in 1..{self.timesteps} "
                "(--model.timesteps), e.g. 50."
            )
        if not 0.0 <= self.ddim_eta <= 1.0:
            found.append(
                f"--model.ddim-eta is {self.ddim_eta}; it must be in [0, 1] "
                "(0: deterministic DDIM, 1: the variance of DDPM)."
            )
        elif self.sampler == "ddpm" and self.ddim_eta != 0.0:
            found.append(
                f"--model.ddim-eta is {self.ddim_eta}, but --model.sampler ddpm ignores it; "
                "use --model.sampler ddim, or leave --model.ddim-eta at 0."
            )
        if self.pixel_range is not None:  # None: the dataset's range, checked by build()
            low, high = self.pixel_range
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                found.append(
                    f"--model.pixel-range is {list(self.pixel_range)}; give the lowest stored "
                    "pixel value, then a higher highest one (e.g. --model.pixel-range 0 255)."
                )
        return found

    def build(self, info):
        from toolbox.models.ddpm.network import DDPM, GaussianDiffusion, UNet

        in_channels, height, width = self.image_shape(info)
        pixel_range = self.pixel_range or info.value_range
        if pixel_range is None:
            raise UserError(
                "--arch ddpm needs the range of the pixel values to clip its samples to, and "
                "this dataset does not give one (DatasetInfo.value_range); pass it with "
                "--model.pixel-range LOW HIGH (e.g. --model.pixel-range 0 255 for 8-bit images)."
            )
        unet = UNet(
            in_channels, self.base_channels, attention=self.attention, norm_groups=NORM_GROUPS
        )
        return DDPM(
            unet,
            GaussianDiffusion(self.timesteps, self.beta_schedule),
            image_shape=(in_channels, height, width),
            mean=info.mean,
            std=info.std,
            pixel_range=pixel_range,
            sampler=self.sampler,
            sample_steps=self.sample_steps,
            ddim_eta=self.ddim_eta,
            num_samples=self.num_samples,
        )
