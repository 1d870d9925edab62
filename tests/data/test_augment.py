"""Random crop + flip: each output is a (maybe mirrored) window of its zero-padded input, drawn fairly, reproducibly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from evosparse.data.augment import random_crop_flip
from evosparse.errors import UsageError


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def matching_windows(image: torch.Tensor, crop: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """Direct per-sample reference: every (top, left, flipped) whose window of the padded image equals ``crop``."""
    _, height, width = image.shape
    padded = F.pad(image, (padding, padding, padding, padding))
    found = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            window = padded[:, top : top + height, left : left + width]
            found += [
                (top, left, flipped)
                for flipped, candidate in ((False, window), (True, window.flip(-1)))
                if torch.equal(candidate, crop)
            ]
    return found


def window_matches(images: torch.Tensor, crops: torch.Tensor, padding: int) -> torch.Tensor:
    """All windows compared at once: (n, tops · lefts · 2) booleans, index = (top · lefts + left) · 2 + flipped."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (padding, padding, padding, padding))
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # (n, c, tops, lefts, h, w)
    target = crops[:, :, None, None]
    return torch.stack(
        [(windows == target).all(-1).all(-1).all(1), (windows.flip(-1) == target).all(-1).all(-1).all(1)], dim=-1
    ).flatten(1)


def test_each_crop_is_one_window_of_its_own_padded_image():
    images = torch.randn(16, 3, 32, 32)
    crops = random_crop_flip(images, generator(), padding=4)
    assert crops.shape == images.shape and crops.dtype == images.dtype
    for image, crop in zip(images, crops):
        assert len(matching_windows(image, crop, 4)) == 1


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 6),
    channels=st.integers(1, 3),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    padding=st.integers(0, 4),
    seed=st.integers(0, 2**31),
)
def test_any_shape_and_padding_gives_windows_of_the_padded_input(batch, channels, height, width, padding, seed):
    # Distinct positive values make every window distinguishable from the others and from the padding.
    images = torch.randperm(batch * channels * height * width, generator=generator(seed)).add(1.0)
    images = images.reshape(batch, channels, height, width)
    crops = random_crop_flip(images, generator(seed), padding)
    assert crops.shape == images.shape
    # At least one: a 1-pixel-wide window equals its mirror, and windows inside the padding are all zero.
    assert window_matches(images, crops, padding).any(1).all()


def test_offsets_are_uniform_and_half_the_images_are_flipped():
    padding, count = 2, 4000
    images = torch.arange(1.0, 65.0).reshape(1, 1, 8, 8).expand(count, 1, 8, 8)
    matches = window_matches(images, random_crop_flip(images, generator(), padding), padding)
    assert (matches.sum(1) == 1).all()
    found = matches.int().argmax(1)
    flipped = found % 2 == 1
    offsets = torch.bincount(found // 2, minlength=(2 * padding + 1) ** 2)
    assert abs(flipped.float().mean().item() - 0.5) < 0.04  # about 3.5 standard deviations
    assert offsets.min() > 100 and offsets.max() < 220  # 160 expected per offset, sd ≈ 12.4
    # Flips are drawn independently of the offsets: both halves cover every offset.
    assert (torch.bincount(found[flipped] // 2, minlength=25) > 0).all()
    assert (torch.bincount(found[~flipped] // 2, minlength=25) > 0).all()


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    images = torch.randn(32, 3, 32, 32)
    first = random_crop_flip(images, generator(7))
    assert torch.equal(first, random_crop_flip(images, generator(7)))
    assert not torch.equal(first, random_crop_flip(images, generator(8)))


def test_integer_images_and_non_square_images_keep_shape_and_dtype():
    images = torch.randint(0, 256, (5, 3, 12, 20), dtype=torch.uint8)
    crops = random_crop_flip(images, generator(), padding=3)
    assert crops.shape == images.shape and crops.dtype == torch.uint8
    for image, crop in zip(images, crops):
        assert matching_windows(image, crop, 3)


def test_without_padding_only_flips_happen_and_the_input_is_untouched():
    images = torch.randn(64, 3, 8, 8)
    copy = images.clone()
    crops = random_crop_flip(images, generator(), padding=0)
    assert torch.equal(images, copy)
    same = (crops == images).flatten(1).all(1)
    mirrored = (crops == images.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all() and 0 < mirrored.sum() < 64


@pytest.mark.parametrize(
    "images,padding,message",
    [
        (torch.zeros(3, 32, 32), 4, "batch, channels, height, width"),
        (torch.zeros(2, 3, 32, 32), -1, "non-negative"),
    ],
)
def test_bad_inputs_are_usage_errors(images, padding, message):
    with pytest.raises(UsageError, match=message):
        random_crop_flip(images, generator(), padding)
