"""Batched augmentation: shapes, determinism by generator, and what each operation does."""

from __future__ import annotations

import torch

from cifarlab.augment import augment_batch, flip_where, random_flip, random_rotate_zoom, random_translate
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


def test_flip_where_mirrors_only_the_masked_images() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    out = flip_where(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(2)) and torch.equal(out[1], x[1])
