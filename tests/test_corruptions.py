"""The CIFAR-10-C corruptions: identity at severity 0, stronger with each severity, seeded, and
checked against slow per-pixel forms of the reference's definitions where we vectorised them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cifarlab import corruptions
from cifarlab.corruptions import CORRUPTIONS, GROUPS, SEVERITIES, corrupt
from cifarlab.errors import UserError


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """16 images with what corruptions act on: flat regions, edges (discs and boxes), texture."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32].astype(float)
    out = []
    for _ in range(16):
        image = np.zeros((32, 32, 3)) + rng.uniform(40, 200, 3)
        for _ in range(4):
            cy, cx, r = *rng.uniform(4, 28, 2), rng.uniform(3, 10)
            disc = rng.random() < 0.5
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2 if disc else \
                (abs(yy - cy) < r) & (abs(xx - cx) < r / 2)
            image[mask] = rng.uniform(0, 255, 3)
        out.append(image + rng.normal(0, 12, (32, 32, 3)))
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ladders(images: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Each corruption at severities 0..5, as float arrays."""
    return {name: [corrupt(images, name, s).astype(np.float64) for s in range(6)]
            for name in CORRUPTIONS}


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def unexplained(clean: np.ndarray, other: np.ndarray) -> float:
    """1 - correlation with the clean image, averaged over images: how much of the image is gone."""
    a = clean.reshape(len(clean), -1) - clean.reshape(len(clean), -1).mean(1, keepdims=True)
    b = other.reshape(len(other), -1) - other.reshape(len(other), -1).mean(1, keepdims=True)
    return float(np.mean(1 - (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


def test_names_and_groups() -> None:
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15
    assert [len(g) for g in GROUPS.values()] == [3, 4, 4, 4]  # noise, blur, weather, digital
    assert tuple(n for g in GROUPS.values() for n in g) == CORRUPTIONS


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_the_input(images: np.ndarray, name: str) -> None:
    assert corrupt(images, name, 0) is images


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_and_seed(images: np.ndarray, name: str) -> None:
    out = corrupt(images, name, 3, seed=7)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out, corrupt(images, name, 3, seed=7))
    assert not np.array_equal(out, images)
    if name not in ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                    "jpeg_compression"):  # the random ones
        assert not np.array_equal(out, corrupt(images, name, 3, seed=8))


def test_works_on_other_sizes_and_empty_batches(images: np.ndarray) -> None:
    small = images[:2, :24, :20]
    for name in CORRUPTIONS:
        assert corrupt(small, name, 5).shape == small.shape
        assert corrupt(images[:0], name, 2).shape == (0, 32, 32, 3)


# Mean absolute difference from the clean image rises with every severity for these. The others
# are tested below with what does rise in the benchmark's own parameters (see the module docstring).
PIXEL_MONOTONE = [n for n in CORRUPTIONS
                  if n not in ("motion_blur", "glass_blur", "elastic_transform", "frost")]


@pytest.mark.parametrize("name", PIXEL_MONOTONE)
def test_each_severity_changes_the_image_more(ladders: dict[str, list[np.ndarray]], name: str) -> None:
    clean, *rest = ladders[name]
    distances = [mean_abs_diff(clean, out) for out in rest]
    assert all(b > a for a, b in zip([0.0, *distances], distances, strict=False)), distances


def test_frost_hides_more_of_the_image_each_severity(ladders: dict[str, list[np.ndarray]]) -> None:
    # The blend lowers the image's weight (1, 1, .9, .85, .75) as it raises the frost's, so the
    # mean difference peaks at severity 3; the share of the image it hides rises throughout.
    clean, *rest = ladders["frost"]
    hidden = [unexplained(clean, out) for out in rest]
    assert all(b > a for a, b in zip([0.0, *hidden], hidden, strict=False)), hidden


def test_motion_blur_severities_3_and_4_are_the_same_blur(ladders: dict[str, list[np.ndarray]]) -> None:
    clean, *rest = ladders["motion_blur"]
    distances = [mean_abs_diff(clean, out) for out in rest]
    assert distances[0] < distances[1] < distances[2] < distances[4]
    assert mean_abs_diff(rest[2], rest[3]) < 0.01  # radius 6 vs 8 at sigma 2: taps of weight < 1e-8


def test_glass_blur_more_rounds_and_more_blur(ladders: dict[str, list[np.ndarray]]) -> None:
    clean, s1, s2, s3, s4, s5 = ladders["glass_blur"]
    # two rounds of pixel moves (4, 5) are farther from the clean image than one (1, 2, 3) ...
    assert min(mean_abs_diff(clean, s) for s in (s4, s5)) > \
        max(mean_abs_diff(clean, s) for s in (s1, s2, s3))
    # ... and, with the same moves (the same seed), more blur moves the image farther from the
    # least blurred: sigma 0.05 < 0.25 < 0.4 in one round, 0.25 < 0.4 in two
    assert 0 < mean_abs_diff(s1, s2) < mean_abs_diff(s1, s3)
    assert mean_abs_diff(s4, s5) > 0


def test_elastic_transform_trades_the_affine_warp_for_local_distortion() -> None:
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    warps, wobbles = [], []
    for severity in SEVERITIES:
        affine, shift = corruptions._elastic_fields(64, 32, 32, severity, torch.Generator().manual_seed(0))
        warps.append(float((affine - torch.stack([xs, ys], -1)).norm(dim=-1).mean()))
        wobbles.append(float(shift.pow(2).sum(1).mean().sqrt()))
    assert warps == sorted(warps, reverse=True) and len(set(warps)) == 5
    assert wobbles[0] == 0 and wobbles == sorted(wobbles) and len(set(wobbles)) == 5


@pytest.mark.parametrize("bad", ["gaussian", "", "Fog"])
def test_unknown_corruption_is_a_user_error(images: np.ndarray, bad: str) -> None:
    with pytest.raises(UserError, match=r"unknown corruption .* \(choose from: gaussian_noise, shot_noise"):
        corrupt(images, bad, 1)


@pytest.mark.parametrize("bad", [-1, 6, 2.0, True, "3"])
def test_severity_outside_0_to_5_is_a_user_error(images: np.ndarray, bad: object) -> None:
    with pytest.raises(UserError, match="severity must be one of 0, 1, 2, 3, 4, 5"):
        corrupt(images, "fog", bad)  # type: ignore[arg-type]


def test_bad_images_are_a_user_error(images: np.ndarray) -> None:
    for bad in (images.astype(np.float32), images[0], images[..., :1]):
        with pytest.raises(UserError, match=r"uint8 images of shape \(N, H, W, 3\)"):
            corrupt(bad, "fog", 1)


# Vectorised forms against slow, literal ones of the reference's definitions.


def test_motion_blur_equals_imagemagick_per_pixel_definition() -> None:
    x = torch.rand(6, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    angles = torch.tensor([-45.0, -30.5, -1.0, 0.0, 22.5, 44.9])
    radius, sigma = 6, 1.5
    width = 2 * math.ceil(radius) + 1
    weights = [math.exp(-i * i / (2 * sigma * sigma)) for i in range(width)]
    expected = torch.zeros_like(x)
    for n in range(len(x)):
        a = math.radians(float(angles[n]))
        for i in range(width):
            dx, dy = math.ceil(i * math.cos(a) - 0.5), math.ceil(i * math.sin(a) - 0.5)
            for y in range(12):
                for xx in range(16):
                    source = x[n, :, min(max(y + dy, 0), 11), min(max(xx + dx, 0), 15)]
                    expected[n, :, y, xx] += weights[i] / sum(weights) * source
    assert torch.allclose(corruptions._motion_blur(x, radius, sigma, angles), expected, atol=1e-6)


def test_glass_blur_moves_equal_the_reference_loop() -> None:
    """The reference's loop, literally (its 'swap' through NumPy views copies), on given moves."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    moves = rng.integers(-1, 1, (32, 32, 2))  # dy, dx in {-1, 0}, as randint(-1, 1)
    looped = image.copy()
    for h in range(31, 1, -1):
        for w in range(31, 1, -1):
            dy, dx = moves[h, w]
            looped[h, w], looped[h + dy, w + dx] = looped[h + dy, w + dx], looped[h, w]
    rows, cols = torch.arange(32).view(32, 1), torch.arange(32).view(1, 32)
    inside = (rows >= 2) & (cols >= 2)
    dy, dx = torch.from_numpy(moves[..., 0]), torch.from_numpy(moves[..., 1])
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    gathered = corruptions._gather(x, torch.where(inside, rows + dy, rows)[None],
                                   torch.where(inside, cols + dx, cols)[None])
    assert np.array_equal(gathered[0].permute(1, 2, 0).numpy().astype(np.uint8), looped)


def test_zoom_matrix_is_scipy_style_clipped_zoom() -> None:
    # clipped_zoom(32 pixels, 1.5): crop 22 from 5, zoom to 33 (aligned corners), trim 0
    matrix = corruptions._zoom_matrix(32, 1.5)
    assert torch.allclose(matrix.sum(1), torch.ones(32, dtype=torch.float64))
    signal = torch.arange(32, dtype=torch.float64)
    expected = 5 + torch.arange(32, dtype=torch.float64) * 21 / 32  # out i reads in 5 + i*(22-1)/(33-1)
    assert torch.allclose(matrix @ signal, expected)
    assert torch.equal(corruptions._zoom_matrix(32, 1.0), torch.eye(32, dtype=torch.float64))


def test_brightness_matches_hsv_value_shift() -> None:
    import colorsys

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    image[0, 0, 0] = 0  # a black pixel turns grey
    out = corrupt(image, "brightness", 4)
    for pixel, got in zip(image.reshape(-1, 3) / 255, out.reshape(-1, 3), strict=True):
        h, s, v = colorsys.rgb_to_hsv(*pixel)
        expected = np.clip(colorsys.hsv_to_rgb(h, s, min(v + 0.2, 1.0)), 0, 1) * 255
        assert np.all(np.abs(got.astype(float) - expected) <= 1)


def test_noise_strength_follows_the_benchmark(images: np.ndarray) -> None:
    # Gaussian noise of std 0.10 at severity 5 (before clipping): check it on mid-grey images
    grey = np.full((64, 32, 32, 3), 128, np.uint8)
    diff = corrupt(grey, "gaussian_noise", 5).astype(float) - 128
    assert abs(diff.std() - 25.5) < 0.5
    salt_pepper = (corrupt(grey, "impulse_noise", 5) != 128).mean()
    assert abs(salt_pepper - 0.07) < 0.005
