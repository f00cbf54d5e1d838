"""Optimizer, learning-rate schedule and lookahead: everything that moves the weights.

    >>> from cifarlab.config import TrainConfig
    >>> lr_at(TrainConfig(lr=0.1), 0.5)
    0.1

Each parameter group carries an `lr_scale` (and optionally `until_epoch`); the training loop
calls `set_lr(optimizer, lr_at(config, progress), epoch)` before every step. The schedule is a
pure function of progress, so a resumed run picks up the exact lr it stopped at.

Models may shape their own groups: a network body with `param_groups(config)` returns groups
(dicts with "params" and options) for parameters that need special treatment; those parameters
are left out of the generic groups. FastNet uses it to freeze its whitening bias after a few
epochs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cifarlab.config import TrainConfig


def build(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam as Keras sets it up, or Nesterov SGD with a separate group for BatchNorm shifts."""
    body = getattr(model, "body", model)
    hook = getattr(body, "param_groups", None)
    special: list[dict[str, Any]] = hook(config) if callable(hook) else []
    taken = {id(p) for group in special for p in group["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    if config.optimizer == "adam":
        # Keras' Adam defaults (eps=1e-7): the seed recipes reproduce Keras notebooks.
        groups = [{"params": params, "lr_scale": 1.0}, *special]
        return torch.optim.Adam(groups, lr=config.lr, eps=1e-7, weight_decay=config.weight_decay)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                for p in m.parameters()}
    norm = [p for p in params if id(p) in norm_ids]
    rest = [p for p in params if id(p) not in norm_ids]
    scale, decay = config.bias_lr_scale, config.weight_decay
    sgd_groups: list[dict[str, Any]] = [{"params": rest, "lr_scale": 1.0, "weight_decay": decay}]
    if norm:  # a faster lr for the shifts, the same decay per step (lr * weight_decay)
        sgd_groups.append({"params": norm, "lr_scale": scale, "weight_decay": decay / scale})
    for group in special:
        sgd_groups.append({"lr_scale": 1.0, "weight_decay": decay, **group})
    return torch.optim.SGD(sgd_groups, lr=config.lr, momentum=config.momentum, nesterov=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: int) -> None:
    """lr * each group's lr_scale; 0 for a group past its `until_epoch` (frozen without touching
    requires_grad, which DistributedDataParallel does not allow to change)."""
    for group in optimizer.param_groups:
        frozen = epoch >= group.get("until_epoch", math.inf)
        group["lr"] = 0.0 if frozen else lr * group.get("lr_scale", 1.0)


def lr_at(config: TrainConfig, progress: float) -> float:
    """Learning rate at `progress` in [0, 1] of training.

    onecycle is piecewise linear: lr_start -> 1 at `warmup` -> lr_end (fractions of `lr`).
    """
    if config.schedule == "constant":
        return config.lr
    progress = min(max(progress, 0.0), 1.0)
    if config.warmup > 0 and progress < config.warmup:
        fraction = config.lr_start + (1 - config.lr_start) * progress / config.warmup
    else:
        rest = (progress - config.warmup) / max(1e-12, 1.0 - config.warmup)
        fraction = 1 + (config.lr_end - 1) * rest
    return config.lr * fraction


class Lookahead:
    """airbench's lookahead: every 5,120 images (its 5 steps) the weights move to an EMA of themselves.

    The EMA's decay grows from 0 to 0.95^5 with the cube of training progress, so early training
    is untouched and late training averages away the noise of the high learning rate. At the end
    the weights become the EMA. Buffers (BatchNorm statistics) are averaged too.
    """

    every_images = 5 * 1024  # airbench: every 5 steps of 1024 images

    def __init__(self, model: nn.Module, batch_size: int):
        self.model = model
        self.every = max(1, round(self.every_images / batch_size))
        self.average = {k: v.detach().clone() for k, v in self._tensors().items()}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, progress: float, final: bool = False) -> None:
        decay = 1.0 if final else 0.95 ** 5 * progress ** 3
        for name, tensor in self._tensors().items():
            average = self.average[name]
            average.lerp_(tensor, 1 - decay)
            tensor.copy_(average)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.average[name].copy_(tensor)
