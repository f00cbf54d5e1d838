"""What did the network learn? Its first-layer filters, its feature maps, and Grad-CAM heat maps.

    figures = explain(model, split.images[:1000], split.labels[:1000], classes, device)
    figures["filters"], figures["feature_maps"], figures["gradcam_correct"], figures["gradcam_wrong"]

The classic claim is that a CNN learns edges and colour blobs in its first layer, then parts, then
objects: `first_layer_filters` shows the first, `feature_maps` the progression, and `grad_cam`
where in the image the evidence for a class lies (Selvaraju et al. 2017, "Grad-CAM").

Grad-CAM is our own 30 lines rather than captum's LayerGradCam: one dependency fewer (captum
pulls in its own stack), and we control the two details that break generic implementations on
these models: an in-place ReLU right after the conv (it overwrites the activation a hook
saved), and models frozen or in eval mode (no gradient would flow). No torchvision or OpenCV:
upsampling is `F.interpolate`, overlays are matplotlib.

Everything works on any `nn.Module` taking raw pixels (N, 3, H, W) in 0..255, such as a
`Classifier`: the layers are found by type, not by name. Figures are `matplotlib.figure.Figure`
objects built without pyplot, like cifarlab.plots.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from cifarlab import plots
from cifarlab.errors import UserError
from cifarlab.evaluate import predict_logits
from cifarlab.plots import RIGHT, WRONG
from cifarlab.runtime import to_batch

STAGES = 4  # feature-map stages shown: the first, the last and evenly between (edges -> parts)
CAM_BATCH = 64  # images per Grad-CAM pass: bounds the memory the backward pass holds
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Mish, nn.Hardswish)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every nn.Conv2d of the model with its name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def find_last_conv(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The layer Grad-CAM looks at: the last nn.Conv2d, or the module named `layer`."""
    convs = conv_layers(model)
    names = ", ".join(name for name, _ in convs) or "none"
    if layer is not None:
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            raise UserError(f"no layer '{layer}' in the model (its conv layers: {names})") from None
    if not convs:
        raise UserError("the model has no nn.Conv2d layer; name the layer to explain with --layer")
    return convs[-1]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, each module's own mode restored after (a model may mix modes)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def grad_cam(model: nn.Module, images: np.ndarray | torch.Tensor, layer: str | None = None,
             target: int | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM heat maps, (N, H, W) float in [0, 1] at the images' size (uint8 NHWC in).

    For each image: the gradient of the target logit (default: the predicted class) with respect
    to the layer's output, averaged over space, weights that output's channels; the ReLU of the
    weighted sum is upsampled bilinearly to the image and scaled to 0..1 (min to max; all zeros
    where the map is flat: no evidence anywhere).

    The layer's output is saved by a forward hook that hands a clone downstream, so an in-place
    ReLU after it changes the clone, not the saved tensor; the gradient comes from
    torch.autograd.grad, so no parameter's .grad is touched. The input asks for a gradient, so
    the maps exist even when every parameter is frozen. The model runs in eval mode and gets its
    modes back.
    """
    name, module = find_last_conv(model, layer)
    device = _device_of(model)
    n = len(images)
    targets = None if target is None else np.array(np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)))
    maps = []
    saved: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise UserError(f"layer '{name}' does not output feature maps (N, C, H, W); "
                            "name a conv layer with --layer")
        saved.append(output)
        return output.clone()

    handle = module.register_forward_hook(keep)
    try:
        with _eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            for start in range(0, n, CAM_BATCH):
                saved.clear()
                batch = to_batch(images[start:start + CAM_BATCH], device).detach().requires_grad_(True)
                logits = model(batch)
                chosen = (logits.argmax(1) if targets is None
                          else torch.as_tensor(targets[start:start + CAM_BATCH], device=logits.device))
                score = logits.gather(1, chosen.view(-1, 1)).sum()
                activation = saved[-1]  # the last call, if the layer runs more than once
                (gradient,) = torch.autograd.grad(score, activation)
                weights = gradient.float().mean((2, 3), keepdim=True)
                cam = F.relu((weights * activation.detach().float()).sum(1, keepdim=True))
                cam = F.interpolate(cam, size=batch.shape[2:], mode="bilinear", align_corners=False)
                low = cam.amin((2, 3), keepdim=True)
                span = cam.amax((2, 3), keepdim=True) - low
                maps.append(torch.where(span > 1e-12, (cam - low) / span.clamp_min(1e-12), 0.0)
                            [:, 0].cpu())
    finally:
        handle.remove()
    if not maps:
        return np.zeros((0, *images.shape[1:3]), np.float32)
    return torch.cat(maps).clamp(0, 1).numpy()


# ---------------------------------------------------------------------------------------------
# Figures


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def first_layer_filters(model: nn.Module) -> Figure:
    """The filters of each conv that reads the RGB image, as RGB tiles.

    Each filter is scaled to 0..1 on its own (its colours and pattern show, not its size). For the
    fast recipe's FastNet this is the frozen 2x2 patch-whitening layer (set from the data's
    covariance, not learned), drawn enlarged like every filter.
    """
    rgb = [(name, conv) for name, conv in conv_layers(model) if conv.in_channels == 3]
    if not rgb:
        raise UserError("the model has no nn.Conv2d reading the 3 image channels")
    rgb = rgb[:2]  # the first (the stem), and a second where a model has two (rare)
    columns = 8
    rows = [math.ceil(conv.out_channels / columns) for _, conv in rgb]
    fig = plots.LabFigure(figsize=(columns * 0.9 + 0.4, sum(rows) * 0.9 + 0.9 * len(rgb) + 0.3),
                 layout="constrained")
    panels = fig.subfigures(len(rgb), 1, height_ratios=[r + 1 for r in rows], squeeze=False)[:, 0]
    for panel, (name, conv), count in zip(panels, rgb, rows, strict=True):
        weight = conv.weight.detach().float().cpu().numpy()  # (out, 3, k, k)
        axes = np.atleast_1d(panel.subplots(count, columns)).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, kernel in zip(axes, weight, strict=False):
            ax.imshow(_unit_range(kernel).transpose(1, 2, 0), interpolation="nearest")
        kind = ("frozen patch-whitening filters (set from the data, not learned)"
                if not conv.weight.requires_grad else "filters")
        size = "x".join(str(k) for k in conv.kernel_size)
        panel.suptitle(f"{name}: {conv.out_channels} {kind}, {size}, each scaled to 0..1",
                       fontsize=10)
    return fig


def _stage_outputs(model: nn.Module, batch: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, output) of every activation module call with a feature-map output, in call order;
    conv outputs (rectified) for a model that applies its activations as functions."""
    found: dict[str, list[tuple[str, torch.Tensor]]] = {"act": [], "conv": []}

    def keeper(kind: str, name: str) -> Any:
        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                value = output.detach().float()
                found[kind].append((name, value if kind == "act" else F.relu(value)))
        return keep

    handles = [m.register_forward_hook(keeper("act", name)) for name, m in model.named_modules()
               if isinstance(m, ACTIVATIONS)]
    handles += [m.register_forward_hook(keeper("conv", name)) for name, m in conv_layers(model)]
    try:
        with _eval_mode(model), torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    # in-place activations overwrite conv outputs: copy now, after the forward pass is whole
    return [(name, t.clone()) for name, t in (found["act"] or found["conv"])]


def _pick_stages(sizes: list[tuple[int, ...]]) -> list[int]:
    """Which stages to show: the first (edges, at full resolution) and the last at each
    resolution (each block's output), at most STAGES of them, the first and last always."""
    picks = sorted({0, *(max(i for i, s in enumerate(sizes) if s == size) for size in set(sizes))})
    if len(picks) > STAGES:
        picks = [picks[round(i)] for i in np.linspace(0, len(picks) - 1, STAGES)]
    return picks


def _mosaic(maps: np.ndarray, columns: int) -> np.ndarray:
    """Channel maps (C, h, w), each scaled to 0..1, tiled `columns` wide with 1-pixel gaps."""
    count, h, w = maps.shape
    rows = math.ceil(count / columns)
    tiles = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for i, m in enumerate(maps):
        r, c = divmod(i, columns)
        tiles[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = _unit_range(m)
    return tiles


def feature_maps(model: nn.Module, images: np.ndarray, max_images: int = 4, channels: int = 8) -> Figure:
    """For a few images: the input, then the strongest channels at a few depths, left to right.

    The stages are outputs of the activations (ReLU, GELU, ...): the first, and the last at each
    resolution (a block's output). Early maps follow edges and colours at full resolution, late
    ones respond to parts of objects at 8x8 or less. The channels of a stage are its `channels` largest by
    mean activation over the images shown, the same channels in every row; each map is scaled to
    0..1 on its own.
    """
    images = images[:max_images]
    if len(images) == 0:
        raise UserError("feature_maps needs at least one image")
    batch = to_batch(images, _device_of(model))
    stages = _stage_outputs(model, batch)
    if not stages:
        raise UserError("the model has no conv layer or activation with feature maps to show")
    chosen = [stages[i] for i in _pick_stages([tuple(t.shape[2:]) for _, t in stages])]
    columns = 4 if channels > 4 else channels
    fig = plots.LabFigure(figsize=(2.0 + 2.3 * len(chosen), 2.1 * len(images) + 0.6), layout="constrained")
    axes = np.array(fig.subplots(len(images), len(chosen) + 1, squeeze=False))
    for row, image in enumerate(images):
        axes[row, 0].imshow(image, interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=9)
    for col, (name, output) in enumerate(chosen, start=1):
        strongest = output.mean((0, 2, 3)).argsort(descending=True)[:channels].cpu()
        maps = output[:, strongest].cpu().numpy()
        for row in range(len(images)):
            axes[row, col].imshow(_mosaic(maps[row], columns), cmap="magma", interpolation="nearest")
        c, h, w = output.shape[1:]
        axes[0, col].set_title(f"{name}\n{c} ch, {h}x{w}: top {len(strongest)}", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("Feature maps: the strongest channels, shallow (left) to deep (right)", fontsize=11)
    return fig


def cam_figure(images: np.ndarray, maps: np.ndarray, captions: Sequence[str], right: Sequence[bool],
               title: str = "Grad-CAM: where the evidence for the predicted class lies",
               columns: int = 4) -> Figure:
    """Each image beside itself with its heat map laid over; captions in green (right) or red."""
    count = len(images)
    if count == 0:
        fig = plots.LabFigure(figsize=(6, 1.2))
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"{title}\n(no images to show)", ha="center", va="center", fontsize=11)
        return fig
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    head = 0.8  # inches for the title
    height = rows * 2.0 + head
    fig = plots.LabFigure(figsize=(columns * 3.6, height))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - head / height, wspace=0.05,
                        hspace=0.35)
    axes = np.array(fig.subplots(rows, 2 * columns, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (image, heat, caption, ok) in enumerate(zip(images, maps, captions, right, strict=True)):
        r, c = divmod(i, columns)
        plain, overlay = axes[r, 2 * c], axes[r, 2 * c + 1]
        plain.imshow(image, interpolation="nearest")
        overlay.imshow(image, interpolation="nearest")
        overlay.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        plain.set_title(caption, fontsize=9, color=RIGHT if ok else WRONG, loc="left")
    fig.suptitle(title, fontsize=12, y=1 - 0.2 / height)
    return fig


def _pick_shown(confidence: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` most confident predictions where `mask` holds."""
    candidates = np.flatnonzero(mask)
    return candidates[np.argsort(-confidence[candidates], kind="stable")[:count]]


def explain(model: nn.Module, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
            device: torch.device, layer: str | None = None, count: int = 8) -> dict[str, Figure]:
    """The four figures: filters, feature_maps, gradcam_correct, gradcam_wrong.

    The Grad-CAM figures show the `count` most confident correct predictions and the `count` most
    confident wrong ones ("what did it look at when it called this cat a dog?"); the heat maps
    are for the predicted class. The feature maps use the most confident correct image of each
    of the first four classes that have one.
    """
    if len(images) == 0:
        raise UserError("explain needs at least one image")
    model = model.to(device)
    probs = predict_logits(model, images, device).softmax(1).numpy()
    predicted, confidence = probs.argmax(1), probs.max(1)
    labels = np.asarray(labels)
    correct = predicted == labels
    figures: dict[str, Figure] = {"filters": first_layer_filters(model)}
    examples = []
    for cls in dict.fromkeys(labels[_pick_shown(confidence, correct, len(images))].tolist()):
        examples.append(_pick_shown(confidence, correct & (labels == cls), 1)[0])
        if len(examples) == 4:
            break
    # too few classes predicted right (an untrained model): fill up with the first other images
    examples += [i for i in range(len(images)) if i not in examples][:4 - len(examples)]
    shown = np.array(examples)
    figures["feature_maps"] = feature_maps(model, images[shown], max_images=4)
    for key, mask, word in (("gradcam_correct", correct, "correct"), ("gradcam_wrong", ~correct, "wrong")):
        picked = _pick_shown(confidence, mask, count)
        heat = grad_cam(model, images[picked], layer=layer, target=predicted[picked])
        captions = [
            (f"✓ {classes[predicted[i]]} {confidence[i]:.0%}" if correct[i] else
             f"✗ {classes[predicted[i]]} {confidence[i]:.0%}\n(true: {classes[labels[i]]})")
            for i in picked]
        figures[key] = cam_figure(
            images[picked], heat, captions, correct[picked].tolist(),
            title=f"Grad-CAM on {find_last_conv(model, layer)[0]}: the most confident {word} "
                  f"predictions, heat on the predicted class")
    return figures


def explain_images(model: nn.Module, images: np.ndarray, names: Sequence[str], classes: Sequence[str],
                   device: torch.device, layer: str | None = None) -> dict[str, Figure]:
    """The figures for your own images, whose true class is unknown: filters, feature maps and
    Grad-CAM on the predicted class of each image."""
    if len(images) == 0:
        raise UserError("explain needs at least one image")
    model = model.to(device)
    probs = predict_logits(model, images, device).softmax(1).numpy()
    predicted, confidence = probs.argmax(1), probs.max(1)
    heat = grad_cam(model, images, layer=layer, target=predicted)
    captions = [f"{Path(str(name)).name}\n{classes[predicted[i]]} {confidence[i]:.0%}"
                for i, name in enumerate(names)]
    return {
        "filters": first_layer_filters(model),
        "feature_maps": feature_maps(model, images[:4], max_images=4),
        "gradcam": cam_figure(images, heat, captions, [True] * len(images),
                              title=f"Grad-CAM on {find_last_conv(model, layer)[0]}: heat on the "
                                    "predicted class"),
    }
