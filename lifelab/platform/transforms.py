"""Batched image transforms on the device the stream lives on: rotation, crop-and-flip
augmentation, normalisation. Random choices are drawn by the caller from a CPU generator (the
learner's seeded one), so a resumed learner replays them bit for bit; the transforms themselves
are deterministic gathers and arithmetic.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip")
CROP_PADDING = 4     # pixels of zero padding before the random crop (Mammoth, He et al. 2016)


def rotation_map(degrees: float, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For an anticlockwise rotation by `degrees` about the image centre with nearest-neighbour
    sampling (as PIL's `Image.rotate`, which GEM's rotated MNIST used): each output pixel's
    source index into the flattened H*W plane, and whether that source lies inside the image
    (outside: black). The source is the pixel whose cell holds the rotated point, in float64,
    so multiples of 90 degrees move pixels exactly."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    i, j = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                          torch.arange(width, dtype=torch.float64), indexing="ij")
    cy, cx = (height - 1) / 2, (width - 1) / 2
    x, y = j - cx, i - cy                                   # y points down, as image rows do
    src_j = torch.floor(x * cos - y * sin + cx + 0.5)
    src_i = torch.floor(x * sin + y * cos + cy + 0.5)
    valid = (src_i >= 0) & (src_i < height) & (src_j >= 0) & (src_j < width)
    index = (src_i.clamp(0, height - 1) * width + src_j.clamp(0, width - 1)).long()
    return index.flatten(), valid.flatten()


def rotate(x: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) rotated with a `rotation_map`: one gather, like a permutation.
    (index_select, here and elsewhere: several times faster than advanced indexing on CPU.)"""
    b, c, h, w = x.shape
    out = x.reshape(b, c, h * w).index_select(2, index)
    return torch.where(valid, out, torch.zeros((), dtype=x.dtype, device=x.device)).reshape(
        b, c, h, w)


def draw_crop_flip(n: int, generator: torch.Generator, padding: int = CROP_PADDING,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop offsets (n, 2) in 0..2*padding and flip flags (n,) for `crop_flip`."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return offsets, flips


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
              padding: int = CROP_PADDING) -> torch.Tensor:
    """Each image of (B, C, H, W) zero-padded by `padding`, cropped back to H x W at its offset
    (row, column), then mirrored left-right where flipped: torchvision's RandomCrop(padding) +
    RandomHorizontalFlip, for the whole batch in one gather."""
    b, c, h, w = x.shape
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)                     # (B, H)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]     # (B, W)
    source = rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]            # (B, H, W)
    source = source.reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, source).reshape(b, c, h, w)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; `mean` and `std` shaped (C, 1, 1)."""
    return (x - mean) / std
