"""Model registry, user models, and the networks the recipes use.

Every network is wrapped in `Classifier`, which takes raw pixels (uint8 or float in 0..255, NCHW)
and normalises them itself with the training set's mean and std. A checkpoint therefore carries
its own preprocessing, and evaluation, prediction and export cannot get it wrong.

A model is named by a string: a registered name ("base", or one of yours added with
`@register_model("name")`), or an import spec, "path/to/file.py:Class" or "package.module:Name".
Specs are imported only when the user names them (`--model`, `model=`), never because a
checkpoint names them: loading a file must not run code.

Networks may offer hooks the trainer calls: `init_from_data(images)` (FastNet sets its whitening
filters from the data) and `param_groups(config)` (optimizer groups that need their own lr).

    >>> import cifarlab as cl
    >>> "base" in cl.models()
    True
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab.errors import UserError

ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make a factory (or nn.Module class) trainable by name.

    The factory gets `num_classes` as a keyword if it accepts one, plus the config's model_kwargs.

        >>> import cifarlab as cl
        >>> from torch import nn
        >>> @cl.register_model("tiny")
        ... class Tiny(nn.Sequential):
        ...     def __init__(self, num_classes=10):
        ...         super().__init__(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
        >>> "tiny" in cl.models()
        True
    """
    def decorate(factory: ModelFactory) -> ModelFactory:
        MODELS[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    return sorted(MODELS)


def describe_models() -> dict[str, str]:
    """name -> the first line of the model's docstring, for every registered model."""
    return {name: ((inspect.getdoc(MODELS[name]) or "").splitlines() or [""])[0]
            for name in sorted(MODELS)}


def is_spec(name: str) -> bool:
    """"file.py:Class" or "package.module:Name", as opposed to a registered name."""
    return ":" in name


def import_spec(spec: str) -> ModelFactory:
    """The class or factory an import spec names; a bad spec is a one-line UserError."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise UserError(f"--model {spec!r}: expected FILE.py:Name or package.module:Name")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise UserError(f"--model {spec!r}: file not found: {path}")
        module_name = f"cifarlab_user_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UserError(f"--model {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # the user's code failed: say where, in one line
            sys.modules.pop(module_name, None)
            raise UserError(f"--model {spec!r}: importing {path} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UserError(f"--model {spec!r}: cannot import {target}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--model {spec!r}: {target} has no class or function {attr!r}")
    return factory


def factory_for(name: str) -> ModelFactory:
    if is_spec(name):
        return import_spec(name)
    if name not in MODELS:
        from cifarlab.config import suggest

        raise UserError(f"unknown model '{name}'{suggest(name, MODELS)} (registered: "
                        f"{', '.join(list_models())}; or FILE.py:Class)")
    return MODELS[name]


def spec_of(obj: Any) -> str:
    """The name a config records for a factory or module passed from Python."""
    for name, factory in MODELS.items():
        if factory is obj or (isinstance(obj, nn.Module) and type(obj) is factory):
            return name
    kind = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    return f"{kind.__module__}:{kind.__qualname__}"


def make_body(model: str | ModelFactory | nn.Module, num_classes: int,
              kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The network itself: from a name/spec, a factory or class, or an instance (used as is)."""
    if isinstance(model, nn.Module):
        return model
    factory = factory_for(model) if isinstance(model, str) else model
    kwargs = dict(kwargs or {})
    try:
        params = inspect.signature(factory).parameters
        if "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs.setdefault("num_classes", num_classes)
    except (TypeError, ValueError):  # a builtin without a signature: pass only kwargs
        pass
    try:
        body = factory(**kwargs)
    except TypeError as exc:
        raise UserError(f"cannot build the model {getattr(factory, '__name__', factory)!r} with "
                        f"{kwargs}: {exc} (set its arguments with --set model_kwargs.NAME=VALUE)"
                        ) from exc
    except (RuntimeError, ValueError, MemoryError, OverflowError) as exc:
        # Sizes the machine cannot hold or torch refuses (a negative width, 10^9 classes): the
        # allocator fails at once, with a message worth one line, not a traceback.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = first.split("DefaultCPUAllocator: ")[-1][:200]
        raise UserError(f"cannot build the model {getattr(factory, '__name__', factory)!r} with "
                        f"{kwargs}: {first}") from exc
    if not isinstance(body, nn.Module):
        raise UserError(f"the model factory {getattr(factory, '__name__', factory)!r} returned "
                        f"{type(body).__name__}, not a torch.nn.Module")
    return body


class Classifier(nn.Module):
    """Normalisation + network + temperature: raw pixels (N, 3, 32, 32) in 0..255 in, logits out.

    The temperature is 1 while training; afterwards it is fitted on the validation split
    (calibrate.py), so softmax(logits) are calibrated probabilities wherever the model goes.
    """

    mean: torch.Tensor
    std: torch.Tensor
    temperature: torch.Tensor

    def __init__(self, body: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.ones(()))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x)) / self.temperature

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Files from before calibration have no temperature: theirs is 1."""
        if "temperature" not in state_dict:
            state_dict = {**state_dict, "temperature": torch.ones(())}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def create_model(name: str | ModelFactory | nn.Module, num_classes: int,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (255.0, 255.0, 255.0),
                 kwargs: dict[str, Any] | None = None) -> Classifier:
    """A Classifier around the named (or given) network; normalisation defaults to /255."""
    return Classifier(make_body(name, num_classes, kwargs), mean, std)


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, as Keras initialises Conv2D and Dense.

    base, robust and bn reproduce the classic Keras tutorial, so they start from the same initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_relu_pool(c_in: int, c_out: int) -> list[nn.Module]:
    """Conv + ReLU + MaxPool, computed as Conv, MaxPool, ReLU: max and ReLU commute, so the
    outputs and gradients are the same, and the ReLU touches a quarter of the values (the Keras
    tutorial's models train ~10-25% faster a step on the CPU; BENCHMARKS.md). The parameter indices in the
    Sequential are unchanged, so older checkpoints load."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True)]


@register_model("base")
def base_cnn(num_classes: int = 10) -> nn.Module:
    """The classic Keras tutorial's base CNN: 3 x (Conv 3x3 + ReLU + MaxPool), 32/64/128 filters, Linear."""
    net = nn.Sequential(
        *_conv_relu_pool(3, 32), *_conv_relu_pool(32, 64), *_conv_relu_pool(64, 128),
        nn.Flatten(), nn.Linear(128 * 4 * 4, num_classes),
    )
    keras_init(net)
    return net


@register_model("base_dropout")
def base_dropout_cnn(num_classes: int = 10) -> nn.Module:
    """`base` with Dropout(0.5) before the last Linear (the Keras tutorial's robust model)."""
    net = nn.Sequential(
        *_conv_relu_pool(3, 32), *_conv_relu_pool(32, 64), *_conv_relu_pool(64, 128),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(128 * 4 * 4, num_classes),
    )
    keras_init(net)
    return net


def _bn_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
        nn.MaxPool2d(2), nn.ReLU(inplace=True), nn.Dropout(0.25),  # = ReLU then pool; cheaper
    ]


@register_model("bn")
def bn_cnn(num_classes: int = 10) -> nn.Module:
    """The Keras tutorial's BatchNorm + Dropout CNN: 3 x [Conv-BN-ReLU x2, MaxPool, Dropout .25], MLP head."""
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

    def __init__(self, c_in: int, c_out: int, bn_momentum: float = 0.4, act: str = "gelu"):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _frozen_scale_bn(c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _frozen_scale_bn(c_out, bn_momentum)
        self.act = activation(act)
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


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation '{name}' (model_kwargs.act: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]()


class FastNet(nn.Module):
    """Frozen 2x2 patch-whitening conv, three ConvGroups, global max-pool, scaled linear head.

    `bn_momentum` is torch's (the weight of each new batch in the running statistics; airbench
    writes 0.6 for 1 - 0.4) and `act` the activation of the groups ("gelu", "silu", "relu"): both
    settable as model_kwargs, like `widths`.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (64, 256, 256),
                 whiten_width: int = 24, bn_momentum: float = 0.4, act: str = "gelu"):
        super().__init__()
        if len(widths) != 3 or not all(isinstance(w, int) and w > 0 for w in widths):
            raise UserError(f"model_kwargs.widths must be three positive channel counts, got {widths!r}")
        if not 0 < bn_momentum <= 1:
            raise UserError(f"model_kwargs.bn_momentum must be in (0, 1], got {bn_momentum!r}")
        # 2x2 patches of 3 channels have 12 dimensions; the layer holds each whitening filter
        # and its negative (24 channels), so the GELU after it loses no information.
        self.whiten = nn.Conv2d(3, whiten_width, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        self.groups = nn.Sequential(
            ConvGroup(whiten_width, widths[0], bn_momentum, act),
            ConvGroup(widths[0], widths[1], bn_momentum, act),
            ConvGroup(widths[1], widths[2], bn_momentum, act),
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

    def param_groups(self, config: Any) -> list[dict[str, Any]]:
        """The whitening bias learns for the first `whiten_bias_epochs`, then its lr drops to 0
        (airbench: it helps early and only adds noise late), at `whiten_bias_lr_scale` x lr,
        falling linearly to 0 on the way with `whiten_bias_decay` (airbench94_muon)."""
        if not config.whiten_bias_epochs or config.optimizer in ("adam", "adamw"):
            return []
        scale = config.whiten_bias_lr_scale
        return [{"params": [self.whiten.bias], "until_epoch": config.whiten_bias_epochs,
                 "lr_scale": scale, "weight_decay": config.weight_decay / scale,
                 "linear_to_zero": config.whiten_bias_decay}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


@register_model("fastnet")
def fastnet(num_classes: int = 10, widths: Sequence[int] = (64, 256, 256), **kwargs: Any) -> nn.Module:
    """airbench94's widths (64, 256, 256): ~0.24 GFLOP per image forward. Keywords (model_kwargs):
    widths, bn_momentum, act (see FastNet)."""
    return FastNet(num_classes, widths=tuple(widths), **kwargs)


@register_model("fastnet_small")
def fastnet_small(num_classes: int = 10, widths: Sequence[int] = (32, 128, 128),
                  **kwargs: Any) -> nn.Module:
    """Half the widths (32, 128, 128): ~4x fewer FLOPs, for tight CPU budgets."""
    return FastNet(num_classes, widths=tuple(widths), **kwargs)
