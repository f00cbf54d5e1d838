"""Optimizer, learning-rate schedule and lookahead: everything that moves the weights.

    >>> from cifarlab.config import TrainConfig
    >>> lr_at(TrainConfig(lr=0.1), 0.5)
    0.1

Each parameter group carries an `lr_scale` (and optionally `until_epoch`); the training loop
calls `set_lr(optimizer, lr_at(config, progress, history), epochs_done)` before every step. The
schedule is a pure function of progress and of the epochs' rows (the plateau schedule reads its
val figures), both of which a checkpoint holds, so a resumed run picks up the exact lr it stopped at.

Models may shape their own groups: a network body with `param_groups(config)` returns groups
(dicts with "params" and options) for parameters that need special treatment; those parameters
are left out of the generic groups. FastNet uses it to freeze its whitening bias after a few
epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cifarlab.config import TrainConfig, better


def build(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW as Keras sets them up; Nesterov SGD with a separate group for BatchNorm
    shifts; or Muon for the conv filters with that same SGD for everything else."""
    body = getattr(model, "body", model)
    hook = getattr(body, "param_groups", None)
    special: list[dict[str, Any]] = hook(config) if callable(hook) else []
    taken = {id(p) for group in special for p in group["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    if config.optimizer == "adam":
        # Keras' Adam defaults (eps=1e-7): base, robust and bn reproduce the classic Keras tutorial.
        groups = [{"params": params, "lr_scale": 1.0}, *special]
        return torch.optim.Adam(groups, lr=config.lr, eps=1e-7, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        # Keras' AdamW: decay every weight (biases and BatchNorm too, as Keras does unless told
        # otherwise) by lr x weight_decay a step, apart from the gradient's Adam scaling. Both
        # libraries multiply the decay by the lr, so Keras' weight_decay means the same here.
        groups = [{"params": params, "lr_scale": 1.0}, *special]
        return torch.optim.AdamW(groups, lr=config.lr, eps=1e-7, weight_decay=config.weight_decay)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                for p in m.parameters()}
    norm = [p for p in params if id(p) in norm_ids]
    rest = [p for p in params if id(p) not in norm_ids]
    scale, decay = config.bias_lr_scale, config.weight_decay
    sgd_groups: list[dict[str, Any]] = [{"params": rest, "lr_scale": 1.0, "weight_decay": decay}]
    if norm:  # a faster lr for the shifts, the same decay per step (lr * weight_decay)
        sgd_groups.append({"params": norm, "lr_scale": scale, "weight_decay": decay / scale})
    for group in special:
        group = {"lr_scale": 1.0, "weight_decay": decay, **group}
        group["peak_lr"] = config.lr * group["lr_scale"]  # where a linear_to_zero group starts
        sgd_groups.append(group)
    if config.optimizer == "muon":
        filters = [p for p in rest if p.ndim == 4 and p.shape[-1] > 1]
        sgd_groups[0]["params"] = [p for p in rest if not (p.ndim == 4 and p.shape[-1] > 1)]
        muon_group = {"params": filters, "muon": True, "lr_scale": config.muon_lr / config.lr,
                      "momentum": config.muon_momentum, "weight_decay": 0.0}
        return Muon([muon_group, *sgd_groups], lr=config.lr, momentum=config.momentum)
    return torch.optim.SGD(sgd_groups, lr=config.lr, momentum=config.momentum, nesterov=True)


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Roughly U V^T of g = U S V^T, by a quintic Newton-Schulz iteration (Jordan 2024).

    The coefficients push small singular values up fast rather than converging exactly: the
    result has singular values spread around 1, which trains as well as the exact polar factor
    at a fraction of the cost. fp32 here: these CPUs have no fast bf16.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + eps)  # the top singular value is then at most 1
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for groups marked `muon` (3x3 conv filters), Nesterov SGD for the others.

    A filter's update is its Nesterov momentum, reshaped to C_out x (C_in*9) and orthogonalised:
    every direction of the filter bank moves by about the same amount, so rarely-excited
    directions learn as fast as dominant ones. Each filter bank is also held at a fixed norm
    (sqrt(C_out)) before its step, which makes the lr a relative step size. After
    airbench94_muon (Jordan, 94.01% in 8 epochs where SGD needs 9.9). One optimizer, so one
    state_dict, and checkpoints and resume work as for SGD.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.85):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": 0.0,
                                  "muon": False})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if not decay else p.grad.add(p, alpha=decay)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(grad)
                update = grad.add(buf, alpha=momentum)  # Nesterov
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / (p.norm() + 1e-12))
                    update = orthogonalize(update.reshape(len(p), -1)).view_as(p)
                p.add_(update, alpha=-lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: float) -> None:
    """lr * each group's lr_scale; 0 for a group past its `until_epoch` (frozen without touching
    requires_grad, which DistributedDataParallel does not allow to change). A `linear_to_zero`
    group falls linearly from its `peak_lr` to 0 at `until_epoch` instead. `epoch` counts the
    epochs done, with the fraction of the current one (2.5: half-way through the third)."""
    for group in optimizer.param_groups:
        until = group.get("until_epoch", math.inf)
        if epoch >= until:
            group["lr"] = 0.0
        elif group.get("linear_to_zero"):
            group["lr"] = group["peak_lr"] * (1 - epoch / until)
        else:
            group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_at(config: TrainConfig, progress: float,
          history: Sequence[dict[str, Any]] = ()) -> float:
    """Learning rate at `progress` in [0, 1] of training; `history`: the rows of the epochs done
    (only the plateau schedule reads them). In fractions of `lr`:

    - every schedule: lr_start -> 1 linearly over the first `warmup` of training (if any);
    - constant: 1;
    - onecycle: then linearly down to lr_end at the end;
    - cosine: then half a cosine down to lr_end (Keras CosineDecay with warmup_steps and alpha);
    - step: step_factor ** (epochs done // step_every), not below lr_end (PyTorch StepLR);
    - plateau: plateau_factor ** plateau_drops(config, history), not below lr_end.
    """
    progress = min(max(progress, 0.0), 1.0)
    warming = config.warmup > 0 and progress < config.warmup
    warm = config.lr_start + (1 - config.lr_start) * progress / config.warmup if warming else 1.0
    rest = (progress - config.warmup) / max(1e-12, 1.0 - config.warmup)
    if config.schedule == "onecycle":
        fraction = warm if warming else 1 + (config.lr_end - 1) * rest
    elif config.schedule == "cosine":
        fraction = warm if warming else (
            config.lr_end + (1 - config.lr_end) * (1 + math.cos(math.pi * rest)) / 2)
    elif config.schedule == "step":
        # progress x epochs is the epoch count up to rounding (9.9999999 for 10): the 1e-9
        # keeps the first step of an epoch in that epoch; a step is >= 1e-5 of an epoch.
        drops = math.floor(progress * config.epochs + 1e-9) // config.step_every
        fraction = warm * max(config.step_factor ** drops, config.lr_end)
    elif config.schedule == "plateau":
        drops = plateau_drops(config, history)
        fraction = warm * max(config.plateau_factor ** drops, config.lr_end)
    else:
        fraction = warm
    return config.lr * fraction


def plateau_drops(config: TrainConfig, history: Sequence[dict[str, Any]]) -> int:
    """How often the plateau schedule has cut the lr after the epochs in `history`.

    Keras' ReduceLROnPlateau rule (cooldown 0): a cut after `plateau_patience` evaluated epochs
    in a row without a better `monitor` than the best so far, and the count starts again after
    each cut. Worked out from the rows alone (epochs without val figures are skipped), so a
    resumed run, whose checkpoint holds them, goes on with the same lr.

        >>> from cifarlab.config import TrainConfig
        >>> rows = [{"val_acc": a} for a in (0.5, 0.6, 0.6, 0.55, 0.7, 0.6, 0.6)]
        >>> plateau_drops(TrainConfig(plateau_patience=2), rows)
        2
    """
    best: float | None = None
    waited = drops = 0
    for row in history:
        value = row.get(config.monitor)
        if not isinstance(value, int | float) or not math.isfinite(value):
            continue
        if better(config.monitor, value, best):
            best, waited = value, 0
        else:
            waited += 1
            if waited >= config.plateau_patience:
                drops, waited = drops + 1, 0
    return drops


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
