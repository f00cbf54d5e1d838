"""Model registry and the networks the recipes use.

Every network is wrapped in `Classifier`, which takes raw pixels (uint8 or float in 0..255, NCHW)
and normalises them itself with the training set's mean and std. A checkpoint therefore carries
its own preprocessing, and evaluation, prediction and export cannot get it wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

ModelFactory = Callable[[int], nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def decorate(factory: ModelFactory) -> ModelFactory:
        MODELS[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    return sorted(MODELS)


class Classifier(nn.Module):
    """Normalisation + network: input is raw pixels (N, 3, 32, 32) in 0..255, output logits."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, body: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))


def create_model(name: str, num_classes: int, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (255.0, 255.0, 255.0)) -> Classifier:
    if name not in MODELS:
        raise KeyError(name)
    return Classifier(MODELS[name](num_classes), mean, std)


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, as Keras initialises Conv2D and Dense.

    The seed recipes reproduce Keras notebooks, so they start from the same initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_relu_pool(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]


@register_model("base")
def base_cnn(num_classes: int) -> nn.Module:
    """The seed's base CNN: 3 x (Conv 3x3 + ReLU + MaxPool) with 32/64/128 filters, Linear."""
    net = nn.Sequential(
        *_conv_relu_pool(3, 32), *_conv_relu_pool(32, 64), *_conv_relu_pool(64, 128),
        nn.Flatten(), nn.Linear(128 * 4 * 4, num_classes),
    )
    keras_init(net)
    return net


@register_model("base_dropout")
def base_dropout_cnn(num_classes: int) -> nn.Module:
    """`base` with Dropout(0.5) before the last Linear (the seed's robust model)."""
    net = nn.Sequential(
        *_conv_relu_pool(3, 32), *_conv_relu_pool(32, 64), *_conv_relu_pool(64, 128),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(128 * 4 * 4, num_classes),
    )
    keras_init(net)
    return net


def _bn_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Dropout(0.25),
    ]


@register_model("bn")
def bn_cnn(num_classes: int) -> nn.Module:
    """The seed's BatchNorm + Dropout CNN: 3 x [Conv-BN-ReLU x2, MaxPool, Dropout 0.25], MLP head."""
    net = nn.Sequential(
        *_bn_block(3, 32), *_bn_block(32, 64), *_bn_block(64, 128),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(128, num_classes),
    )
    keras_init(net)
    return net


# ---------------------------------------------------------------------------------------------
# The network of the `fast` recipe, after airbench (Jordan, arXiv 2404.00498) and David Page's
# "How to train your ResNet": a small VGG-like net whose every piece buys time-to-accuracy.


class ConvGroup(nn.Module):
    """Conv -> MaxPool -> BN -> GELU -> Conv -> BN -> GELU.

    Pooling right after the first conv quarters the cost of everything after it. The convs start
    as identity maps on their first channels (Dirac init), so the untrained net passes the
    whitened input straight through and early training is stable at a high learning rate.
    """

    def __init__(self, c_in: int, c_out: int, bn_momentum: float = 0.4):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _frozen_scale_bn(c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _frozen_scale_bn(c_out, bn_momentum)
        self.act = nn.GELU()
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
            n = min(conv.in_channels, conv.out_channels)
            with torch.no_grad():
                torch.nn.init.dirac_(conv.weight[:n])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def _frozen_scale_bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1: with the weight decay on the convs, a learnable scale
    only adds a redundant degree of freedom (airbench); the shift stays learnable."""
    norm = nn.BatchNorm2d(channels, momentum=momentum, eps=1e-12)
    norm.weight.requires_grad_(False)
    return norm


class FastNet(nn.Module):
    """Frozen 2x2 patch-whitening conv, three ConvGroups, global max-pool, scaled linear head."""

    def __init__(self, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256),
                 whiten_width: int = 24):
        super().__init__()
        # 2x2 patches of 3 channels have 12 dimensions; the layer holds each whitening filter
        # and its negative (24 channels), so the GELU after it loses no information.
        self.whiten = nn.Conv2d(3, whiten_width, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        self.groups = nn.Sequential(
            ConvGroup(whiten_width, widths[0]), ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = 1 / 9  # keeps initial logits small: softer early gradients

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from the covariance of 2x2 patches of (normalised) images.

        After this layer, patch features are decorrelated with unit variance: the optimiser no
        longer has to learn the strong pixel correlations of natural images first.
        """
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N, C, H-1, W-1, 2, 2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * 2 * 2).double()
        mean = patches.mean(0)
        patches = patches - mean
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, 3, 2, 2)
        half = self.whiten.out_channels // 2
        filters = filters.flip(0)[:half]  # strongest components first
        self.whiten.weight.copy_(torch.cat([filters, -filters]).float())
        # Centre the outputs too: the bias removes the mean patch.
        assert self.whiten.bias is not None
        self.whiten.bias.copy_(-(self.whiten.weight.flatten(1).double() @ mean).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


@register_model("fastnet")
def fastnet(num_classes: int) -> nn.Module:
    """airbench94's widths (64, 256, 256): ~0.24 GFLOP per image forward."""
    return FastNet(num_classes)


@register_model("fastnet_small")
def fastnet_small(num_classes: int) -> nn.Module:
    """Half the widths (32, 128, 128): ~4x fewer FLOPs, for tight CPU budgets."""
    return FastNet(num_classes, widths=(32, 128, 128))
