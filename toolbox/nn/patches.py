"""Cutting sequences and images into flat, non-overlapping patches, and putting them back.

Each patch is flattened channel-major, (C, patch_len) or (C, patch_height, patch_width), the
order of Conv1d/Conv2d weights: a Linear layer over patches equals a convolution whose stride
is its kernel size. Image patches run left to right, then top to bottom.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toolbox.nn._checks import check_positive


def _check_ndim(x: torch.Tensor, ndim: int, expected: str, function: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{function} expects {expected}, got shape {tuple(x.shape)}")


def _pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    check_positive(name, min(height, width))
    return height, width


def patchify_1d(x: torch.Tensor, patch_len: int, channels_last: bool = False) -> torch.Tensor:
    """(B, C, L), or (B, L, C) when ``channels_last``, to (B, L / patch_len, C * patch_len)."""
    layout = "(batch, length, channels)" if channels_last else "(batch, channels, length)"
    _check_ndim(x, 3, layout, "patchify_1d")
    check_positive("patch_len", patch_len)
    if channels_last:
        x = x.transpose(1, 2)
    batch, channels, length = x.shape
    if length % patch_len:
        raise ValueError(
            f"sequence length {length} is not divisible by patch_len {patch_len}; "
            f"pad or crop it to a multiple of {patch_len}"
        )
    # (B, C, N, P) -> (B, N, C, P) -> (B, N, C * P)
    return x.unflatten(2, (length // patch_len, patch_len)).permute(0, 2, 1, 3).flatten(2)


def unpatchify_1d(
    patches: torch.Tensor, patch_len: int, channels_last: bool = False
) -> torch.Tensor:
    """The inverse of :func:`patchify_1d`: (B, N, C * patch_len) to (B, C, N * patch_len)."""
    _check_ndim(patches, 3, "(batch, num_patches, features)", "unpatchify_1d")
    check_positive("patch_len", patch_len)
    features = patches.shape[2]
    if features % patch_len:
        raise ValueError(
            f"patch features {features} are not divisible by patch_len {patch_len}, so they "
            "cannot be (channels, patch_len) patches"
        )
    # (B, N, C, P) -> (B, C, N, P) -> (B, C, N * P)
    x = patches.unflatten(2, (features // patch_len, patch_len)).permute(0, 2, 1, 3).flatten(2)
    return x.transpose(1, 2) if channels_last else x


def patchify_2d(images: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) to (B, (H / ph) * (W / pw), C * ph * pw) for patches of ``patch_size``."""
    _check_ndim(images, 4, "(batch, channels, height, width)", "patchify_2d")
    patch_height, patch_width = _pair(patch_size, "patch_size")
    batch, channels, height, width = images.shape
    if height % patch_height or width % patch_width:
        raise ValueError(
            f"image size {height}x{width} is not divisible by patch size "
            f"{patch_height}x{patch_width}; pad, crop or resize the images"
        )
    grid = images.reshape(
        batch, channels, height // patch_height, patch_height, width // patch_width, patch_width
    )
    # (B, C, gh, ph, gw, pw) -> (B, gh, gw, C, ph, pw) -> (B, gh * gw, C * ph * pw)
    return grid.permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)


def unpatchify_2d(
    patches: torch.Tensor,
    patch_size: int | tuple[int, int],
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The inverse of :func:`patchify_2d`: (B, N, C * ph * pw) to (B, C, H, W).

    ``image_size=None`` means a square grid of patches.
    """
    _check_ndim(patches, 3, "(batch, num_patches, features)", "unpatchify_2d")
    patch_height, patch_width = _pair(patch_size, "patch_size")
    batch, num_patches, features = patches.shape
    if image_size is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"{num_patches} patches do not form a square grid; give image_size=(H, W)"
            )
        image_size = (side * patch_height, side * patch_width)
    height, width = image_size
    if height % patch_height or width % patch_width:
        raise ValueError(
            f"image size {height}x{width} is not divisible by patch size "
            f"{patch_height}x{patch_width}"
        )
    grid_height, grid_width = height // patch_height, width // patch_width
    if num_patches != grid_height * grid_width:
        raise ValueError(
            f"{num_patches} patches cannot fill a {height}x{width} image, which takes "
            f"{grid_height}x{grid_width} patches of {patch_height}x{patch_width}"
        )
    if features % (patch_height * patch_width):
        raise ValueError(
            f"patch features {features} are not divisible by the patch area "
            f"{patch_height}x{patch_width}, so they cannot be (channels, ph, pw) patches"
        )
    channels = features // (patch_height * patch_width)
    grid = patches.reshape(batch, grid_height, grid_width, channels, patch_height, patch_width)
    # (B, gh, gw, C, ph, pw) -> (B, C, gh, ph, gw, pw) -> (B, C, H, W)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)


class Patchify1d(nn.Module):
    """(B, C, L), or (B, L, C) when ``channels_last``, to (B, L / patch_len, C * patch_len)."""

    def __init__(self, patch_len: int, channels_last: bool = False) -> None:
        super().__init__()
        check_positive("patch_len", patch_len)
        self.patch_len = patch_len
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patchify_1d(x, self.patch_len, self.channels_last)


class Unpatchify1d(nn.Module):
    """(B, N, C * patch_len) back to (B, C, N * patch_len), or (B, N * patch_len, C)."""

    def __init__(self, patch_len: int, channels_last: bool = False) -> None:
        super().__init__()
        check_positive("patch_len", patch_len)
        self.patch_len = patch_len
        self.channels_last = channels_last

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify_1d(patches, self.patch_len, self.channels_last)


class Patchify2d(nn.Module):
    """(B, C, H, W) to (B, num_patches, C * ph * pw), patches left to right, top to bottom."""

    def __init__(self, patch_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.patch_size = _pair(patch_size, "patch_size")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return patchify_2d(images, self.patch_size)


class Unpatchify2d(nn.Module):
    """(B, num_patches, C * ph * pw) back to (B, C, H, W); ``image_size=None`` means square."""

    def __init__(
        self, patch_size: int | tuple[int, int], image_size: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.patch_size = _pair(patch_size, "patch_size")
        if image_size is not None:
            height, width = _pair(image_size, "image_size")
            if height % self.patch_size[0] or width % self.patch_size[1]:
                raise ValueError(
                    f"image_size {height}x{width} is not divisible by patch_size "
                    f"{self.patch_size[0]}x{self.patch_size[1]}"
                )
        self.image_size = image_size

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify_2d(patches, self.patch_size, self.image_size)
