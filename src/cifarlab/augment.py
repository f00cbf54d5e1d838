"""Batched data augmentation on tensors, on the training device.

Every operation works on a whole batch (N, C, H, W) of float images at once: no per-image Python
loops and no DataLoader worker processes, which would only fight over 2 CPU cores. Randomness
comes from an explicit `torch.Generator`, so a seed fixes every flip, angle, shift and box.

`augment_batch` changes images only; `mix_batch` (mixup, cutmix) mixes pairs of images and
their labels, so it returns soft targets beside the images (step.loss_of takes either).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cifarlab.config import Augment


def augment_batch(settings: Augment, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply the augmentations `settings` switches on to a batch: Keras' order (flip, rotation and
    zoom, translation), colour jitter, the mixed chains of AugMix / PRIME operations, then cutout
    and random erasing.

    With `settings.consistency` (AugMix's Jensen-Shannon training) the result holds three views
    of each image, stacked: the image with its flips and shifts, then two copies mixed
    independently ((3N, C, H, W)); step.loss_of reads the views back from the shapes.
    """
    if settings.flip:
        x = random_flip(x, gen)
    if settings.rotation > 0 or settings.zoom > 0:
        x = random_rotate_zoom(x, gen, settings.rotation, settings.zoom)
    if settings.translate > 0:
        x = random_translate(x, gen, settings.translate)
    if settings.colour:
        x = colour_jitter(x, gen, settings.brightness, settings.contrast, settings.saturation)
    if settings.augmix or settings.prime:  # the chains start from the flipped, moved image
        mixed = [mix_chains(x, gen, families_of(settings), settings.mix_width, settings.mix_depth,
                            settings.mix_severity, settings.mix_share)
                 for _ in range(CONSISTENCY_VIEWS - 1 if settings.consistency > 0 else 1)]
        x = torch.cat([x, *mixed]) if settings.consistency > 0 else mixed[0]
    # Occlusion last (as timm erases after AugMix): the box's fill is neither jittered nor mixed.
    if settings.cutout > 0:
        x = cutout(x, gen, settings.cutout)
    if settings.erasing > 0:
        x = random_erasing(x, gen, settings.erasing)
    return x


def _uniform(n: int, low: float, high: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    values = torch.rand(n, generator=gen) * (high - low) + low
    return values.to(device=like.device, dtype=like.dtype)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    return flip_where(x, torch.rand(x.shape[0], generator=gen) < 0.5)


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images of the batch where `mask` (N,) is true."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(3), x)


def random_rotate_zoom(x: torch.Tensor, gen: torch.Generator, rotation: float,
                       zoom: float) -> torch.Tensor:
    """Rotate by up to +-rotation*360 degrees and zoom by up to +-zoom, with reflected borders.

    One affine grid per image and a single `grid_sample` for the whole batch, as Keras'
    RandomRotation and RandomZoom do (fill_mode='reflect', bilinear).
    """
    n = x.shape[0]
    angle = _uniform(n, -rotation * 2 * math.pi, rotation * 2 * math.pi, gen, x)
    # scale > 1 samples a larger area (zoom out); < 1 a smaller one (zoom in).
    scale = _uniform(n, 1 - zoom, 1 + zoom, gen, x)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) else out


def random_translate(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Shift each image by up to `pad` pixels in x and y (reflect-pad, then crop).

    Images that share a shift are cropped together: at most (2*pad+1)^2 slices per batch.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for sx in range(2 * pad + 1):
        for sy in range(2 * pad + 1):
            idx = torch.nonzero((dx == sx) & (dy == sy)).squeeze(1).to(x.device)
            if idx.numel():
                out[idx] = padded[idx, :, sy:sy + h, sx:sx + w]
    return out


def _layout_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`out` in the memory layout of `x` (channels_last trains ~1.6x faster on the CPU)."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def box_mask(top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
             size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(N, 1, H, W) true inside each image's box (rows top..top+height-1, columns likewise);
    a box that reaches past the border is cut there. Any box sizes, one comparison per axis."""
    rows = torch.arange(size[0], device=device).view(1, -1, 1)
    cols = torch.arange(size[1], device=device).view(1, 1, -1)
    top, left = top.to(device).view(-1, 1, 1), left.to(device).view(-1, 1, 1)
    height, width = height.to(device).view(-1, 1, 1), width.to(device).view(-1, 1, 1)
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return inside.unsqueeze(1)


def cutout(x: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): a size x size square, its centre anywhere in the image (so
    sometimes partly outside), set to the batch's mean colour: the paper's zero after
    normalisation, here on raw pixels."""
    n, _, h, w = x.shape
    centre_y = torch.randint(0, h, (n,), generator=gen)
    centre_x = torch.randint(0, w, (n,), generator=gen)
    side = torch.full((n,), size)
    mask = box_mask(centre_y - size // 2, centre_x - size // 2, side, side, (h, w), x.device)
    return _layout_of(torch.where(mask, x.mean((0, 2, 3), keepdim=True), x), x)


ERASE_AREA = (0.02, 0.33)  # share of the image: Zhong et al., torchvision and Keras defaults
ERASE_ASPECT = (0.3, 1 / 0.3)  # height / width, drawn uniformly in log space


def random_erasing(x: torch.Tensor, gen: torch.Generator, share: float) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017): in `share` of the images, a rectangle of 2-33% of the
    area and aspect 0.3-3.3 filled with uniform noise (0..255). A rectangle drawn larger than
    the image is cut at its border (torchvision draws again instead)."""
    n, c, h, w = x.shape
    chosen = torch.rand(n, generator=gen) < share
    area = (torch.rand(n, generator=gen) * (ERASE_AREA[1] - ERASE_AREA[0]) + ERASE_AREA[0]) * h * w
    low, high = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    aspect = torch.exp(torch.rand(n, generator=gen) * (high - low) + low)
    height = (area * aspect).sqrt().round().clamp(1, h).long()
    width = (area / aspect).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=gen) * (h - height + 1)).long()
    left = (torch.rand(n, generator=gen) * (w - width + 1)).long()
    noise = (torch.rand(n, c, h, w, generator=gen) * 255).to(device=x.device, dtype=x.dtype)
    mask = box_mask(top, left, height * chosen, width, (h, w), x.device)  # 0 rows: untouched
    return _layout_of(torch.where(mask, noise, x), x)


def _beta(gen: torch.Generator, alpha: float, n: int) -> torch.Tensor:
    """n draws of Beta(alpha, alpha), seeded by `gen` (torch's Beta takes no generator, so
    numpy's, seeded from it, draws them)."""
    if alpha <= 0:
        return torch.ones(n)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    return torch.from_numpy(rng.beta(alpha, alpha, n)).float()


def mix_batch(settings: Augment, x: torch.Tensor, labels: torch.Tensor, num_classes: int,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): each image is mixed with another
    of the batch (a random pairing), with its own share `lam` ~ Beta(alpha, alpha), as keras_cv's
    MixUp and CutMix do per image.

    mixup blends the whole images, lam x own + (1 - lam) x other; cutmix pastes a box of the
    other image with (1 - lam) of the area (cut at the border, and lam taken from the box that
    was pasted). With both on, each image gets one of the two, half and half. Returns the images
    and their soft targets (N, num_classes): lam on the own class, 1 - lam on the other's.
    """
    n, _, h, w = x.shape
    partner = torch.randperm(n, generator=gen)
    lam_mix, lam_cut = _beta(gen, settings.mixup, n), _beta(gen, settings.cutmix, n)
    if settings.mixup > 0 and settings.cutmix > 0:
        use_cut = torch.rand(n, generator=gen) < 0.5
    else:
        use_cut = torch.full((n,), settings.cutmix > 0)
    # CutMix's box: sides sqrt(1 - lam) of the image's, centred anywhere, cut at the border.
    ratio = (1 - lam_cut).sqrt()
    cut_h, cut_w = (ratio * h).long(), (ratio * w).long()
    centre_y = torch.randint(0, h, (n,), generator=gen)
    centre_x = torch.randint(0, w, (n,), generator=gen)
    top, bottom = (centre_y - cut_h // 2).clamp(0, h), (centre_y + cut_h // 2).clamp(0, h)
    left, right = (centre_x - cut_w // 2).clamp(0, w), (centre_x + cut_w // 2).clamp(0, w)
    lam_cut = 1 - ((bottom - top) * (right - left)).float() / (h * w)
    mask = box_mask(top, left, (bottom - top) * use_cut, right - left, (h, w), x.device)
    other = x[partner.to(x.device)]
    blend = lam_mix.to(x.device, x.dtype).view(-1, 1, 1, 1)
    mixed = torch.where(use_cut.to(x.device).view(-1, 1, 1, 1), x, blend * x + (1 - blend) * other)
    images = _layout_of(torch.where(mask, other, mixed), x)
    lam = torch.where(use_cut, lam_cut, lam_mix).to(labels.device).view(-1, 1)
    one_hot = F.one_hot(labels, num_classes).float()
    return images, lam * one_hot + (1 - lam) * one_hot[partner.to(labels.device)]
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL and torchvision weigh RGB


def colour_jitter(x: torch.Tensor, gen: torch.Generator, brightness: float = 0.0,
                  contrast: float = 0.0, saturation: float = 0.0) -> torch.Tensor:
    """Per image: add a brightness shift of up to +-brightness x 255, scale each channel about
    its mean by a contrast factor in 1 +- contrast, and the colour about the grey image by a
    saturation factor in 1 +- saturation; then clip to 0..255 (pixel values, as the model sees).

    Photos of one object differ in exposure and colour; these views teach the net to ignore it
    (hiverge's record on airbench94_muon trains with brightness and contrast jitter).
    Elementwise on the whole batch: ~1 ms for 256 images on one CPU core.
    """
    n = x.shape[0]
    if brightness > 0:
        x = x + _uniform(n, -brightness * 255, brightness * 255, gen, x).view(n, 1, 1, 1)
    if contrast > 0:
        mean = x.mean((2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - contrast, 1 + contrast, gen, x).view(n, 1, 1, 1) + mean
    if saturation > 0 and x.shape[1] == 3:
        weights = torch.tensor(GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        grey = (x * weights).sum(1, keepdim=True)
        x = (x - grey) * _uniform(n, 1 - saturation, 1 + saturation, gen, x).view(n, 1, 1, 1) + grey
    return x.clamp(0, 255)
# ---------------------------------------------------------------------------------------------
# Robustness: random chains of operations, mixed with the image (AugMix's scheme).
#
# AugMix (Hendrycks et al., ICLR 2020, arXiv 1912.02781) gives each image `width` chains of 1-3
# random operations, averages the chains with Dirichlet(1) weights and blends the average with
# the image by a Beta(1, 1) weight. Its operations exclude every corruption type of CIFAR-10-C,
# so that the benchmark measures generalisation to unseen damage, not memorised corruptions: it
# drops contrast, colour, brightness and sharpness (and uses no noise, blur or JPEG) for that
# reason. We keep that rule.
#
# Two families of operations can fill the chains (each step picks a family, then one of its ops):
# - "augmix": AugMix's nine: autocontrast, equalize, posterize, solarize, rotate, shear x and y,
#   translate x and y;
# - "prime": PRIME's random filter and random colour curve (Modas et al., ECCV 2022, arXiv
#   2112.13547). PRIME's third primitive, a random smooth displacement field, is left out: it is
#   the family of CIFAR-10-C's elastic_transform (a smoothed random displacement field).
# Everything runs on the whole batch: an operation is computed once for all the images that drew
# it (an index, not a loop over images). Every random number comes from the generator passed in,
# in an order that depends on that generator and the batch size alone, never on the pixels, so a
# run resumed at any step draws the same numbers.

AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "solarize", "rotate", "shear_x", "shear_y",
              "translate_x", "translate_y")
PRIME_OPS = ("random_filter", "random_colour")
FAMILIES: dict[str, tuple[str, ...]] = {"augmix": AUGMIX_OPS, "prime": PRIME_OPS}
OPERATIONS = (*AUGMIX_OPS, *PRIME_OPS)  # an operation's number is its place here
CONSISTENCY_VIEWS = 3  # AugMix: the image and two mixed copies of it
_AFFINE = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
FILTER_SIGMA = 4.0  # PRIME's CIFAR setting: the filter's random part has a std up to 4
COLOUR_MODES, COLOUR_TEMPERATURE = 100, 0.01  # PRIME's CIFAR setting: up to 100 sine modes


def families_of(settings: Augment) -> tuple[str, ...]:
    """The operation families `settings` switches on, in a fixed order."""
    return tuple(name for name, on in (("augmix", settings.augmix), ("prime", settings.prime)) if on)


def mix_chains(x: torch.Tensor, gen: torch.Generator, families: tuple[str, ...] = ("augmix",),
               width: int = 3, depth: int = 0, severity: int = 3, share: float = 1.0) -> torch.Tensor:
    """AugMix: mix `width` random chains of operations from `families` into each image.

    `x` holds images in 0..255 (N, C, H, W). A chain applies `depth` operations (0: 1 to 3 at
    random, per chain and image); `severity` (1-10) scales AugMix's operations as its reference
    code does (3 for CIFAR there). A random `share` of the images is mixed; the rest pass as
    they are. The result stays in 0..255.

        >>> import torch
        >>> x = torch.rand(8, 3, 32, 32) * 255
        >>> y = mix_chains(x, torch.Generator().manual_seed(0), ("augmix", "prime"))
        >>> y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 255
        True
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown augmentation families {unknown} (choose from {list(FAMILIES)})")
    n = x.shape[0]
    # Dirichlet(1, ..., 1) is normalised Exp(1), and Beta(1, 1) is uniform: both from `gen`.
    weights = -torch.log1p(-torch.rand(n, width, generator=gen))
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    blend = torch.rand(n, generator=gen)
    mixed = torch.rand(n, generator=gen) < share
    steps = depth if depth > 0 else 3
    lengths = (torch.randint(1, 4, (width, n), generator=gen) if depth <= 0
               else torch.full((width, n), depth))
    # All chains at once: the batch repeated `width` times (chain-major), one step at a time.
    chains = x.contiguous().repeat(width, 1, 1, 1)
    for step in range(steps):
        chains = random_operation(chains, gen, families, severity, lengths.flatten() > step)
    chains = chains.view(width, *x.shape)
    mix = (weights.T.to(x.device, x.dtype)[:, :, None, None, None] * chains).sum(0)
    out = x + _per_image(blend, x) * (mix - x)  # (1 - m) x + m mix
    out = torch.where(mixed.to(x.device)[:, None, None, None], out, x)
    return out.clamp(0, 255)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype)[:, None, None, None]


def random_operation(x: torch.Tensor, gen: torch.Generator, families: tuple[str, ...],
                     severity: int = 3, active: torch.Tensor | None = None) -> torch.Tensor:
    """One step of a chain: each image (where `active`) draws a family, one of its operations
    and a strength, and gets that operation; the other images pass unchanged."""
    n = x.shape[0]
    family = torch.randint(0, len(families), (n,), generator=gen)
    pick = torch.rand(n, generator=gen)
    # AugMix's sample_level: a strength uniform in [0.1, severity], out of 10.
    strength = (torch.rand(n, generator=gen) * (severity - 0.1) + 0.1) / 10
    signed = strength * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    op = torch.full((n,), -1)
    for f, name in enumerate(families):
        ops = FAMILIES[name]
        first = OPERATIONS.index(ops[0])
        op = torch.where(family == f, first + (pick * len(ops)).long().clamp_max(len(ops) - 1), op)
    if active is not None:
        op = torch.where(active, op, -1)
    out = x.clone()
    affine_ids = torch.tensor([OPERATIONS.index(name) for name in _AFFINE])
    idx = torch.nonzero(torch.isin(op, affine_ids)).squeeze(1)
    if idx.numel():
        theta = affine_thetas(op[idx], signed[idx], x.shape[-1])
        where = idx.to(x.device)
        out[where] = warp(x[where], theta.to(x.device, x.dtype))
    for number, name in enumerate(OPERATIONS):
        if name in _AFFINE:
            continue
        idx = torch.nonzero(op == number).squeeze(1)
        if idx.numel():
            where = idx.to(x.device)
            out[where] = PIXEL_OPERATIONS[name](x[where], strength[idx].to(x.device), gen)
    return out


def affine_thetas(op: torch.Tensor, value: torch.Tensor, size: int) -> torch.Tensor:
    """(K, 2, 3) affine_grid matrices: rotate by value x 30 degrees, shear by value x 0.3,
    translate by value x size/3 pixels (AugMix's ranges), each about the image centre."""
    k = op.shape[0]
    theta = torch.eye(2, 3).repeat(k, 1, 1)
    angle = value * math.radians(30)
    is_rotate = op == OPERATIONS.index("rotate")
    theta[:, 0, 0] = torch.where(is_rotate, torch.cos(angle), 1.0)
    theta[:, 0, 1] = torch.where(is_rotate, -torch.sin(angle), 0.0)
    theta[:, 1, 0] = torch.where(is_rotate, torch.sin(angle), 0.0)
    theta[:, 1, 1] = torch.where(is_rotate, torch.cos(angle), 1.0)
    shear, shift = value * 0.3, value * (size / 3) * 2 / size  # a shift in [-1, 1] units
    theta[:, 0, 1] = torch.where(op == OPERATIONS.index("shear_x"), shear, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(op == OPERATIONS.index("shear_y"), shear, theta[:, 1, 0])
    theta[:, 0, 2] = torch.where(op == OPERATIONS.index("translate_x"), shift, 0.0)
    theta[:, 1, 2] = torch.where(op == OPERATIONS.index("translate_y"), shift, 0.0)
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each image through its own affine map, bilinear, black outside (as AugMix's PIL ops)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def autocontrast(x: torch.Tensor, strength: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Stretch each channel of each image to the full 0..255 (PIL's ImageOps.autocontrast)."""
    low = x.amin((2, 3), keepdim=True)
    high = x.amax((2, 3), keepdim=True)
    stretched = (x - low) * (255 / (high - low).clamp_min(1e-6))
    return torch.where(high > low, stretched.clamp(0, 255), x)


def equalize(x: torch.Tensor, strength: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Histogram equalisation per image and channel, PIL's ImageOps.equalize rule, batched:
    one histogram per (image, channel) by scatter_add, then a lookup table each."""
    n, c, h, w = x.shape
    values = x.clamp(0, 255).floor().long().reshape(n * c, h * w)
    counts = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    counts.scatter_add_(1, values, torch.ones_like(values))
    # PIL: step = (pixels - count of the last used level) // 255; lut[i] = (step // 2 + below) // step
    last = 255 - (counts > 0).flip(1).long().argmax(1)
    step = (h * w - counts.gather(1, last[:, None]).squeeze(1)) // 255
    below = counts.cumsum(1) - counts
    lut = (step[:, None] // 2 + below) // step.clamp_min(1)[:, None]
    out = lut.clamp(0, 255).gather(1, values).to(x.dtype).reshape(n, c, h, w)
    return torch.where((step > 0).reshape(n, c, 1, 1), out, x)


def posterize(x: torch.Tensor, strength: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Keep 4 - int(strength x 4) bits of each value (AugMix: 4 or 3 bits at severity 3)."""
    bits = 4 - (strength * 4).floor().clamp(0, 4)
    unit = (2 ** (8 - bits))[:, None, None, None].to(x.dtype)
    return (x.clamp(0, 255) / unit).floor() * unit


def solarize(x: torch.Tensor, strength: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Invert the values at or above 256 - int(strength x 256) (AugMix: above ~180 at most)."""
    threshold = (256 - (strength * 256).floor())[:, None, None, None].to(x.dtype)
    return torch.where(x >= threshold, 255 - x, x)


def random_filter(x: torch.Tensor, strength: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """PRIME's spectral primitive: a random 3x3 filter per image, the identity plus Gaussian
    weights of a std drawn uniform in [0, 4], the same for each channel (zero border), clipped.

    A random filter multiplies the image's spectrum by a random smooth function: it boosts and
    cuts random frequencies, which no single blur or sharpen of the benchmark does.
    """
    k, c, h, w = x.shape
    sigma = torch.rand(k, generator=gen) * FILTER_SIGMA
    kernel = torch.randn(k, 3, 3, generator=gen) * sigma[:, None, None]
    kernel[:, 1, 1] += 1.0
    weight = kernel.repeat_interleave(c, 0)[:, None].to(x.device, x.dtype)  # (k*c, 1, 3, 3)
    out = F.conv2d(x.reshape(1, k * c, h, w), weight, padding=1, groups=k * c)
    return out.reshape(k, c, h, w).clamp(0, 255)


def random_colour(x: torch.Tensor, strength: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """PRIME's colour primitive: each channel of each image through its own random smooth curve,
    v + sum_k a_k sin(pi k v) over the first `cut` modes (cut uniform in 1..100, a_k Gaussian of
    variance uniform in [0, 0.01]), v in 0..1; as a 256-entry table per channel, interpolated."""
    k, c, h, w = x.shape
    cut = torch.randint(1, COLOUR_MODES + 1, (k, 1, 1), generator=gen)
    temperature = torch.rand(k, 1, 1, generator=gen) * COLOUR_TEMPERATURE
    modes = torch.arange(1, COLOUR_MODES + 1)
    coeff = torch.randn(k, c, COLOUR_MODES, generator=gen) * temperature.sqrt() * (modes <= cut)
    levels = torch.linspace(0, 1, 256)
    table = levels + coeff @ torch.sin(math.pi * modes[:, None] * levels[None, :])  # (k, c, 256)
    table = (table.clamp(0, 1) * 255).to(x.device, x.dtype).reshape(k * c, 256)
    v = x.clamp(0, 255).reshape(k * c, h * w)
    low = v.floor().long().clamp_max(254)
    frac = v - low
    below, above = table.gather(1, low), table.gather(1, low + 1)
    return (below + frac * (above - below)).reshape(k, c, h, w)


PIXEL_OPERATIONS = {"autocontrast": autocontrast, "equalize": equalize, "posterize": posterize,
                    "solarize": solarize, "random_filter": random_filter,
                    "random_colour": random_colour}
