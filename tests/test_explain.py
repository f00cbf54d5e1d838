"""Explain: Grad-CAM maps (size, range, where they peak, no side effects), layer lookup, figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from cifarlab.errors import UserError
from cifarlab.explain import cam_figure, explain, feature_maps, find_last_conv, first_layer_filters, grad_cam
from cifarlab.networks import Classifier, FastNet, create_model, list_models
from conftest import class_images

CLASSES = [f"class{i}" for i in range(10)]
LAST_CONV = {"base": "body.6", "base_dropout": "body.6", "bn": "body.19",
             "fastnet": "body.groups.2.conv2", "fastnet_small": "body.groups.2.conv2"}



@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return class_images(np.arange(12) % 10, seed=5)


def registered(name: str) -> Classifier:
    torch.manual_seed(0)
    model = create_model(name, 10, (120.0, 120.0, 110.0), (60.0, 60.0, 65.0))
    if isinstance(model.body, FastNet):
        model.body.init_from_data(model.normalize(torch.rand(64, 3, 32, 32) * 255))
    return model


def test_every_registered_model_is_listed_here() -> None:
    assert sorted(LAST_CONV) == list_models()


@pytest.mark.parametrize("name", sorted(LAST_CONV))
def test_find_last_conv(name: str) -> None:
    model = registered(name)
    found, module = find_last_conv(model)
    assert found == LAST_CONV[name] and isinstance(module, nn.Conv2d)
    assert find_last_conv(model, "body")[1] is model.body


def test_an_unknown_layer_lists_the_conv_layers() -> None:
    listing = r"no layer 'body.99' in the model \(its conv layers: body.0, body.3, body.6\)"
    with pytest.raises(UserError, match=listing):
        find_last_conv(registered("base"), "body.99")
    with pytest.raises(UserError, match="has no nn.Conv2d"):
        find_last_conv(Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), (0,) * 3, (1,) * 3))


@pytest.mark.parametrize("name", sorted(LAST_CONV))
@pytest.mark.parametrize("channels_last", [False, True])
def test_grad_cam_maps_have_the_images_size_and_unit_range(name: str, channels_last: bool,
                                                           images: np.ndarray) -> None:
    model = registered(name)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    maps = grad_cam(model, images)
    assert maps.shape == (12, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert np.isfinite(maps.sum())
    assert (maps.reshape(12, -1).max(1) == 1).sum() >= 6  # most maps have evidence somewhere


def red_detector() -> Classifier:
    """Class 1 is "there is red": one conv channel fires on red pixels, an in-place ReLU after
    it, the logit is its spatial mean. Class 0 is a constant."""
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 1, 1] = torch.tensor([1.0, -1.0, -1.0])  # red minus green and blue
        conv.bias.copy_(torch.tensor([-0.2, 0.0]))
        conv.weight[1, 1, 1, 1] = 1.0  # a second channel: green, no evidence for class 1
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
        head.bias.copy_(torch.tensor([0.1, 0.0]))
    body = nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return Classifier(body, (0.0,) * 3, (255.0,) * 3)


@pytest.mark.parametrize("corner", [(0, 0), (0, 20), (20, 8)])
def test_grad_cam_peaks_where_the_evidence_is(corner: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(90, 140, (1, 32, 32, 3)).astype(np.uint8)  # grey noise: no red
    top, left = corner
    image[0, top:top + 10, left:left + 10] = (230, 30, 30)  # a red square
    model = red_detector()
    (heat,) = grad_cam(model, image, target=1)
    inside = np.zeros((32, 32), bool)
    inside[top:top + 10, left:left + 10] = True
    peak = np.unravel_index(heat.argmax(), heat.shape)
    assert inside[peak]
    assert heat[inside].mean() > 0.8 and heat[~inside].mean() < 0.1


def test_grad_cam_leaves_the_model_as_it_was(images: np.ndarray) -> None:
    model = registered("bn").train()
    model.body[1].eval()  # a mixed state: one BatchNorm frozen while training
    model.body[3].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grad_cam(model, images[:4])
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    # eval mode inside: BatchNorm running statistics did not move
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not any(isinstance(m, nn.Module) and hasattr(m, "_forward_hooks") and m._forward_hooks
                   for m in model.modules())


def test_grad_cam_with_frozen_weights_and_inside_inference_mode(images: np.ndarray) -> None:
    model = registered("base").eval().requires_grad_(False)
    with torch.inference_mode():
        maps = grad_cam(model, images[:3])
    assert maps.max() == 1
    assert not any(p.requires_grad for p in model.parameters())


def test_grad_cam_target_and_layer(images: np.ndarray) -> None:
    model = registered("base")
    by_prediction = grad_cam(model, images[:4])
    predicted = model(torch.as_tensor(images[:4]).permute(0, 3, 1, 2)).argmax(1).numpy()
    assert np.allclose(grad_cam(model, images[:4], target=predicted), by_prediction)
    assert not np.allclose(grad_cam(model, images[:4], target=(predicted + 1) % 10), by_prediction)
    assert grad_cam(model, images[:2], layer="body.0").shape == (2, 32, 32)
    with pytest.raises(UserError, match="does not output feature maps"):
        grad_cam(model, images[:2], layer="body.10")  # the Linear head


class OwnNet(nn.Module):
    """A user's model: activations as functions (no ReLU modules), a conv in a nested block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.ModuleDict({"conv": nn.Conv2d(8, 16, 3, stride=2, padding=1)})
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.block["conv"](x))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("name", [*sorted(LAST_CONV), "own"])
def test_explain_builds_all_figures(name: str, images: np.ndarray) -> None:
    torch.manual_seed(1)
    model = Classifier(OwnNet(), (128.0,) * 3, (64.0,) * 3) if name == "own" else registered(name)
    labels = np.arange(12) % 10
    figures = explain(model, images, labels, CLASSES, torch.device("cpu"), count=4)
    assert list(figures) == ["filters", "feature_maps", "gradcam_correct", "gradcam_wrong"]
    assert all(isinstance(f, Figure) and f.axes for f in figures.values())
    if name == "own":
        assert find_last_conv(model)[0] == "body.block.conv"


def test_fastnet_filters_show_the_whitening_layer() -> None:
    fig = first_layer_filters(registered("fastnet"))
    assert "whitening" in fig.subfigs[0].get_suptitle()
    assert sum(bool(ax.images) for ax in fig.axes) == 24  # 12 filters and their negatives
    fig = first_layer_filters(registered("base"))
    assert sum(bool(ax.images) for ax in fig.axes) == 32


def test_feature_maps_go_from_full_resolution_to_the_deepest(images: np.ndarray) -> None:
    fig = feature_maps(registered("bn"), images, max_images=2, channels=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "input"
    assert "32x32" in titles[1] and "4x4" in titles[-1] and len(titles) == 5  # input + 4 stages


def test_cam_figure_with_nothing_to_show() -> None:
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    assert isinstance(cam_figure(empty, np.zeros((0, 32, 32)), [], []), Figure)
