"""Image files as the stored inputs of image datasets: uint8 (C, H, W) tensors."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def image_pixels(image: Image.Image, channels: int, size: int) -> np.ndarray:
    """One image as a (H, W, C) uint8 array: grey (1) or RGB (3), its shorter side resized
    to ``size`` pixels and centre-cropped square (``size`` 0: as it is)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # 16- and 32-bit grey: PIL's convert("L") clips past 255 instead of scaling.
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F":  # 16-bit values: 0..65535 onto 0..255
            values = values / 257.0
        scaled = np.clip(values, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(scaled, "L")
    image = image.convert("L" if channels == 1 else "RGB")
    if size:
        width, height = image.size
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.array(image, dtype=np.uint8).reshape(image.size[1], image.size[0], channels)


def read_image(path: str, channels: int, size: int) -> torch.Tensor:
    """The image file at ``path`` as a uint8 (C, H, W) tensor (see image_pixels)."""
    with Image.open(path) as image:
        pixels = image_pixels(image, channels, size)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of (N, C, H, W) images in stored units, summed
    in float64 over chunks so no float copy of the whole set is made; a constant channel
    gets std 1 (normalising must not divide by 0)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(1024):
        values = chunk.transpose(0, 1).reshape(channels, -1).double()
        total += values.sum(1)
        squares += (values**2).sum(1)
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean**2).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(s if s > 0 else 1.0 for s in std.tolist())
