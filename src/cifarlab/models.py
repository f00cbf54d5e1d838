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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return self.body(x)


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
