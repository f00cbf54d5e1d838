"""Batched augmentation: shapes, determinism by generator, and what each operation does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cifarlab.augment import (
    OPERATIONS,
    PIXEL_OPERATIONS,
    affine_thetas,
    augment_batch,
    flip_where,
    mix_chains,
    random_colour,
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


def test_flip_where_mirrors_only_the_masked_images() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    out = flip_where(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(2)) and torch.equal(out[1], x[1])


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
