"""Batched augmentation: shapes, determinism by generator, and what each operation does."""

from __future__ import annotations

import pytest
import torch

from cifarlab.augment import (
    GREY,
    augment_batch,
    colour_jitter,
    cutout,
    flip_where,
    mix_batch,
    random_erasing,
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


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_cutout_sets_a_square_to_the_batch_mean() -> None:
    x = torch.rand(64, 3, 32, 32) * 255
    out = cutout(x, gen(), 8)
    changed = (out != x).any(1)  # (N, H, W)
    mean = x.mean((0, 2, 3))
    assert torch.allclose(out.permute(0, 2, 3, 1)[changed], mean.expand(int(changed.sum()), 3))
    areas = changed.flatten(1).sum(1)
    assert int(areas.max()) == 64 and int(areas.min()) < 64  # whole squares, some cut at a border
    rows, cols = changed.any(2), changed.any(1)
    assert int(rows.sum(1).max()) == 8 and int(cols.sum(1).max()) == 8  # never more than 8 a side
    assert torch.equal(cutout(x, gen(), 8), out) and not torch.equal(cutout(x, gen(1), 8), out)


def test_random_erasing_erases_the_share_asked_within_the_area() -> None:
    x = torch.full((400, 3, 32, 32), 100.0)
    out = random_erasing(x, gen(), 0.5)
    area = (out != x).any(1).flatten(1).float().mean(1)
    erased = area > 0
    assert 150 < int(erased.sum()) < 250  # about half the images
    assert float(area[erased].max()) <= 0.33 + 0.05 and float(area[erased].min()) >= 0.005
    assert out.min() >= 0 and out.max() <= 255
    assert torch.equal(random_erasing(x, gen(), 0.0), x)
    assert bool(((random_erasing(x, gen(), 1.0) != x).flatten(1).any(1)).all())
    assert torch.equal(random_erasing(x, gen(), 0.5), out)


def test_cutout_and_erasing_are_part_of_augment_batch() -> None:
    assert Augment(cutout=8).active and Augment(erasing=0.5).active
    assert not Augment(mixup=0.2).active and Augment(mixup=0.2).mixes_labels
    x = batch(8)
    out = augment_batch(Augment(cutout=8, erasing=1.0), x, gen(3))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(out, augment_batch(Augment(cutout=8, erasing=1.0), x, gen(3)))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    out = augment_batch(Augment(cutout=8, erasing=1.0), channels_last, gen(3))
    assert out.is_contiguous(memory_format=torch.channels_last)


def distinct(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """n images, each one flat value (its index x 7), and n different labels."""
    x = (torch.arange(n, dtype=torch.float32) * 7).view(n, 1, 1, 1).expand(n, 3, 32, 32).clone()
    return x, torch.arange(n)


def test_mixup_blends_images_and_targets_by_the_same_share() -> None:
    x, labels = distinct()
    out, targets = mix_batch(Augment(mixup=0.4), x, labels, 32, gen())
    assert out.shape == x.shape and targets.shape == (32, 32)
    torch.testing.assert_close(targets.sum(1), torch.ones(32))
    lam = targets[torch.arange(32), labels]
    partner = targets.clone()
    partner[torch.arange(32), labels] = 0
    other = partner.argmax(1)
    expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[other]
    torch.testing.assert_close(out, expected)
    assert float(lam.min()) < 0.9  # Beta(0.4, 0.4): far from 1 for some images
    assert out.min() >= 0 and out.max() <= 31 * 7


def test_cutmix_pastes_a_box_whose_area_is_the_targets_share() -> None:
    x, labels = distinct()
    out, targets = mix_batch(Augment(cutmix=1.0), x, labels, 32, gen())
    own = (out == x).all(1).flatten(1).float().mean(1)  # share of pixels still the image's own
    torch.testing.assert_close(targets[torch.arange(32), labels], own)
    assert float(own.min()) < 0.9
    values = out[:, 0].flatten(1)
    assert all(len(set(v.tolist())) <= 2 for v in values)  # own pixels and pasted ones, no blend


def test_mixup_and_cutmix_together_mix_each_image_one_way() -> None:
    x, labels = distinct(200)
    out, targets = mix_batch(Augment(mixup=1.0, cutmix=1.0), x, labels, 200, gen())
    kinds = [len(set(v.tolist())) for v in out[:, 0].flatten(1)]
    blended = sum(1 for v, k in zip(out[:, 0, 0, 0].tolist(), kinds, strict=True)
                  if k == 1 and v % 7 != 0)
    assert blended > 50 and sum(k == 2 for k in kinds) > 50  # both kinds, about half each
    torch.testing.assert_close(targets.sum(1), torch.ones(200))


def test_mixing_is_seeded() -> None:
    x, labels = distinct()
    settings = Augment(mixup=0.2, cutmix=1.0)
    a, b, c = (mix_batch(settings, x, labels, 32, gen(s)) for s in (5, 5, 6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("bad", [{"cutout": -1}, {"cutout": 33}, {"erasing": 1.5},
                                 {"mixup": -0.1}, {"cutmix": float("inf")}])
def test_bad_augment_values_are_one_line(bad: dict[str, float]) -> None:
    from cifarlab.api import make_config
    from cifarlab.errors import UserError

    with pytest.raises(UserError, match="augment\\."):
        make_config("base", augment=bad)
