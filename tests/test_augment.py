"""Batched augmentation: shapes, determinism by generator, and what each operation does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cifarlab.augment import (
    GREY,
    OPERATIONS,
    PIXEL_OPERATIONS,
    affine_thetas,
    augment_batch,
    colour_jitter,
    cutout,
    flip_where,
    mix_batch,
    mix_chains,
    random_colour,
    random_erasing,
    random_filter,
    random_flip,
    random_operation,
    random_rotate_zoom,
    random_translate,
    warp,
)
from cifarlab.config import Augment, TrainConfig, apply
from cifarlab.errors import UserError


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
# ---------------------------------------------------------------------------------------------
# AugMix chains and PRIME's primitives


def images(n: int = 24, seed: int = 0) -> torch.Tensor:
    """Photo-like test images in 0..255: smooth ramps plus texture, never constant."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 32)
    base = 40 + 160 * (ramp[None, :] * ramp[:, None])[None, None]
    return (base + 50 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 255)


def test_every_operation_keeps_shape_and_range() -> None:
    x = images()
    strength = torch.linspace(0.01, 1.0, len(x))  # up to severity 10
    for name, operation in PIXEL_OPERATIONS.items():
        out = operation(x, strength, torch.Generator().manual_seed(0))
        assert out.shape == x.shape, name
        assert float(out.min()) >= 0 and float(out.max()) <= 255, name
        assert not torch.allclose(out, x), name  # each one changes the images


@pytest.mark.parametrize(("name", "reference"), [
    ("equalize", ImageOps.equalize),
    ("posterize", lambda im: ImageOps.posterize(im, 3)),  # strength 0.25: 4 - int(1.0) bits
    ("solarize", lambda im: ImageOps.solarize(im, 256 - 64)),
    ("autocontrast", ImageOps.autocontrast),
])
def test_augmix_operations_match_pil(name: str, reference: Any) -> None:
    """AugMix applies these with PIL; ours give the same pixels (autocontrast: PIL rounds)."""
    rng = np.random.default_rng(0)
    pictures = (rng.random((5, 32, 32, 3)) ** 2 * 200 + 20).astype(np.uint8)
    x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float()
    ours = PIXEL_OPERATIONS[name](x, torch.full((5,), 0.25), torch.Generator())
    theirs = np.stack([np.asarray(reference(Image.fromarray(p))) for p in pictures])
    assert np.abs(ours.permute(0, 2, 3, 1).numpy() - theirs).max() <= 1.0


def test_affine_operations_move_a_dot_as_said() -> None:
    """translate_x by value v moves the content v x 32/3 pixels; shears and rotations move it
    off its place, and a zero value is the identity."""
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 16] = 255.0
    ops = torch.tensor([OPERATIONS.index("translate_x")])
    moved = warp(x, affine_thetas(ops, torch.tensor([0.3]), 32))
    col = int(moved[0, 0].sum(0).argmax())
    assert abs(col - 16) == round(0.3 * 32 / 3)
    for name in ("rotate", "shear_x", "shear_y", "translate_y"):
        op = torch.tensor([OPERATIONS.index(name)])
        assert torch.allclose(warp(x, affine_thetas(op, torch.zeros(1), 32)), x, atol=1e-3), name


def test_random_filter_and_colour_depend_only_on_the_generator() -> None:
    x = images(8)
    for operation in (random_filter, random_colour):
        a = operation(x, torch.zeros(8), torch.Generator().manual_seed(3))
        b = operation(x, torch.zeros(8), torch.Generator().manual_seed(3))
        c = operation(x, torch.zeros(8), torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("families", [("augmix",), ("prime",), ("augmix", "prime")])
def test_mix_chains_shape_range_and_seed(families: tuple[str, ...]) -> None:
    x = images(32)
    a = mix_chains(x, torch.Generator().manual_seed(7), families)
    b = mix_chains(x, torch.Generator().manual_seed(7), families)
    c = mix_chains(x, torch.Generator().manual_seed(8), families)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 255
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The mix stays near the image: AugMix blends it in, it does not replace it.
    changed = (a - x).abs().flatten(1).mean(1)
    assert float(changed.median()) < 40 and float(changed.max()) > 1


def test_mix_share_leaves_the_rest_as_they_were() -> None:
    x = images(200)
    out = mix_chains(x, torch.Generator().manual_seed(0), ("augmix", "prime"), share=0.3)
    same = (out == x).flatten(1).all(1)
    assert 100 < int(same.sum()) < 180  # ~70% untouched
    assert torch.equal(mix_chains(x, torch.Generator().manual_seed(0), ("augmix",), share=1e-9), x)


def test_inactive_images_pass_a_step_unchanged() -> None:
    x = images(16)
    active = torch.arange(16) % 2 == 0
    out = random_operation(x, torch.Generator().manual_seed(0), ("augmix", "prime"), 3, active)
    assert torch.equal(out[~active], x[~active])


def test_draws_do_not_depend_on_the_pixels() -> None:
    """Exact resume needs the generator's state after a batch to depend on the batch size alone."""
    for x in (images(16, seed=1), torch.zeros(16, 3, 32, 32), torch.full((16, 3, 32, 32), 255.0)):
        gen = torch.Generator().manual_seed(5)
        mix_chains(x, gen, ("augmix", "prime"))
        after = torch.rand(3, generator=gen)
        if x.sum() == 0:
            reference = after
    assert torch.equal(after, reference)


def test_chains_in_augment_batch_and_channels_last() -> None:
    settings = Augment(translate=2, augmix=True, prime=True)
    assert settings.active and Augment(prime=True).active
    x = images(16).contiguous(memory_format=torch.channels_last)
    out = augment_batch(settings, x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(out, augment_batch(Augment(translate=2), x, torch.Generator().manual_seed(1)))


def test_mix_settings_are_checked() -> None:
    assert apply(TrainConfig(), {"augment.augmix": True, "augment.mix_share": 0.5}).augment.augmix
    for key, value in (("augment.mix_width", 0), ("augment.mix_severity", 11),
                       ("augment.mix_share", 0.0), ("augment.mix_depth", -1)):
        with pytest.raises(UserError):
            apply(TrainConfig(), {key: value})
    with pytest.raises(ValueError):
        mix_chains(images(2), torch.Generator(), ("blur",))


def test_consistency_stacks_the_image_and_two_mixed_copies() -> None:
    x = images(6)
    settings = Augment(translate=2, augmix=True, consistency=12.0)
    out = augment_batch(settings, x, torch.Generator().manual_seed(2))
    base = augment_batch(Augment(translate=2), x, torch.Generator().manual_seed(2))
    assert out.shape == (18, 3, 32, 32)
    assert torch.equal(out[:6], base)  # the same flips and shifts, drawn first
    assert not torch.equal(out[6:12], out[12:]) and not torch.equal(out[6:12], base)
    with pytest.raises(UserError, match="augment.augmix or"):
        apply(TrainConfig(), {"augment.consistency": 12.0})
