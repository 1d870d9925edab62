"""The standard CIFAR training augmentation (He et al. 2016, sec. 4.2): random crops of padded images, mirror flips."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from evosparse.errors import UsageError


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Zero-pad each image by ``padding`` pixels, crop back to its size at a random offset, mirror with probability 0.5.

    ``images`` is a (batch, channels, height, width) tensor of any dtype; offsets and flips are
    drawn independently per sample from ``generator`` (offsets first, then flips), so one seed gives
    one batch. On standardised inputs the zero padding is the dataset mean. The whole batch is
    cropped and flipped by one gather, without a loop over samples.
    """
    if images.dim() != 4:
        raise UsageError(f"random crops need a (batch, channels, height, width) tensor, got {tuple(images.shape)}")
    if padding < 0:
        raise UsageError(f"crop padding must be non-negative, got {padding}")
    batch, channels, height, width = images.shape
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=generator.device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=generator.device)
    flip = torch.rand(batch, generator=generator, device=generator.device) < 0.5
    top, left, flip = top.to(images.device), left.to(images.device), flip.to(images.device)
    rows = top[:, None] + torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device).expand(batch, width)
    columns = left[:, None] + torch.where(flip[:, None], columns.flip(1), columns)
    padded = F.pad(images, (padding, padding, padding, padding))
    samples = torch.arange(batch, device=images.device)[:, None, None, None]
    planes = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[samples, planes, rows[:, None, :, None], columns[:, None, None, :]]
