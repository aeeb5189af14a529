"""Augmentation of whole batches on the device: random crop with padding, horizontal flip."""

from __future__ import annotations

import torch


class BatchAugment:
    """Applies the same kind of transform as torchvision's RandomCrop(padding) and
    RandomHorizontalFlip, to a whole (B, C, H, W) batch at once and with a generator of its
    own, so it costs a few kernels per batch and resumes exactly from its saved state."""

    def __init__(self, kind: str, device: torch.device, seed: int, padding: int = 4) -> None:
        self.crop = kind in ("crop", "crop_flip")
        self.flip = kind == "crop_flip"
        self.padding = padding
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        device = images.device
        if self.crop:
            pad = self.padding
            padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))  # zeros, as torchvision
            top = torch.randint(
                0, 2 * pad + 1, (batch, 1, 1), device=device, generator=self.generator
            )
            left = torch.randint(
                0, 2 * pad + 1, (batch, 1, 1), device=device, generator=self.generator
            )
            rows = top + torch.arange(height, device=device).view(1, height, 1)  # (B, H, 1)
            cols = left + torch.arange(width, device=device).view(1, 1, width)  # (B, 1, W)
            samples = torch.arange(batch, device=device).view(batch, 1, 1)
            # Advanced indexing gives (B, H, W, C); move channels back to dim 1.
            images = padded.permute(0, 2, 3, 1)[samples, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            flip = torch.rand(batch, device=device, generator=self.generator) < 0.5
            images = torch.where(flip.view(batch, 1, 1, 1), images.flip(3), images)
        return images.contiguous()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
