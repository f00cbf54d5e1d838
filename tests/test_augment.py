"""Batched augmentation: shapes, determinism by generator, and what each operation does."""

from __future__ import annotations

import torch

from cifarlab.augment import (
    GREY,
    augment_batch,
    colour_jitter,
    flip_where,
    random_flip,
    random_rotate_zoom,
    random_translate,
)
from cifarlab.config import Augment


def batch(n: int = 16) -> torch.Tensor:
    return torch.arange(n * 3 * 32 * 32, dtype=torch.float32).reshape(n, 3, 32, 32) % 255


def test_flip_mirrors_about_half() -> None:
    x = batch(200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 60 < int(flipped.sum()) < 140


def test_same_generator_same_result() -> None:
    aug = Augment(flip=True, rotation=0.1, zoom=0.1, translate=2)
    a = augment_batch(aug, batch(), torch.Generator().manual_seed(7))
    b = augment_batch(aug, batch(), torch.Generator().manual_seed(7))
    c = augment_batch(aug, batch(), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == batch().shape


def test_zero_rotation_and_zoom_is_identity() -> None:
    x = batch(4)
    out = random_rotate_zoom(x, torch.Generator().manual_seed(0), 0.0, 0.0)
    assert torch.allclose(out, x, atol=1e-3)


def test_rotation_changes_images_but_keeps_range() -> None:
    x = torch.rand(8, 3, 32, 32) * 255
    out = random_rotate_zoom(x, torch.Generator().manual_seed(0), 0.1, 0.1)
    assert not torch.allclose(out, x)
    assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3


def test_translate_shifts_within_pad() -> None:
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 16, 16] = 1.0
    out = random_translate(x, torch.Generator().manual_seed(0), pad=2)
    positions = out.flatten(1).argmax(1)
    rows, cols = positions // 32, positions % 32
    assert bool(((rows - 16).abs() <= 2).all() and ((cols - 16).abs() <= 2).all())
    assert len(set(positions.tolist())) > 5


def test_inactive_augment() -> None:
    assert not Augment().active and Augment(flip=True).active


def test_colour_jitter_stays_in_range_and_is_seeded() -> None:
    aug = Augment(brightness=0.2, contrast=0.3, saturation=0.3)
    x = torch.rand(32, 3, 32, 32) * 255
    a = augment_batch(aug, x, torch.Generator().manual_seed(3))
    b = augment_batch(aug, x, torch.Generator().manual_seed(3))
    c = augment_batch(aug, x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert aug.active and aug.colour and not Augment(translate=2).colour


def test_brightness_shifts_each_image_by_one_amount_within_range() -> None:
    x = torch.full((200, 3, 32, 32), 128.0)
    out = colour_jitter(x, torch.Generator().manual_seed(0), brightness=0.1)
    shift = (out - x).flatten(1)
    assert torch.equal(shift.min(1).values, shift.max(1).values)  # one shift an image
    assert shift.abs().max() <= 0.1 * 255 + 1e-4 and shift.abs().max() > 0.08 * 255
    assert shift[:, 0].std() > 5  # and different images differ


def test_contrast_scales_about_the_channel_mean() -> None:
    x = 120 + 15 * torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = colour_jitter(x, torch.Generator().manual_seed(0), contrast=0.3)
    assert torch.allclose(out.mean((2, 3)), x.mean((2, 3)), atol=1e-3)  # no clipping here
    factor = (out - out.mean((2, 3), keepdim=True)).std((2, 3)) / x.std((2, 3))
    assert factor.min() >= 0.7 - 1e-4 and factor.max() <= 1.3 + 1e-4
    assert torch.allclose(factor[:, 0], factor[:, 2], atol=1e-4)  # one factor an image


def test_saturation_keeps_grey_images_and_the_grey_of_colour_ones() -> None:
    grey = torch.full((8, 3, 32, 32), 90.0)
    assert torch.allclose(colour_jitter(grey, torch.Generator().manual_seed(0), saturation=0.5), grey)
    x = 60 + 100 * torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    out = colour_jitter(x, torch.Generator().manual_seed(0), saturation=0.5)
    weights = torch.tensor(GREY).view(1, 3, 1, 1)
    assert torch.allclose((out * weights).sum(1), (x * weights).sum(1), atol=1e-3)
    assert not torch.allclose(out, x)


def test_colour_jitter_keeps_channels_last() -> None:
    x = (torch.rand(4, 3, 32, 32) * 255).contiguous(memory_format=torch.channels_last)
    out = colour_jitter(x, torch.Generator().manual_seed(0), 0.1, 0.1, 0.1)
    assert out.is_contiguous(memory_format=torch.channels_last)
def test_flip_where_mirrors_only_the_masked_images() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    out = flip_where(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(2)) and torch.equal(out[1], x[1])
