"""Keras' `model.summary()` for any torch model: each layer's output shape and parameters, the
totals, and the FLOPs of one image's forward pass (torch.utils.flop_counter counts them from the
operators actually run, so a user's own model is measured as faithfully as ours).

    >>> import cifarlab as cl
    >>> cl.summary("base").total_params     # 3 conv blocks and a Linear head, 10 classes
    113738
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class Layer:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    trainable: int


@dataclass
class ModelSummary:
    """Rows per leaf layer; `str()` prints the table."""

    title: str
    layers: list[Layer] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    flops: int = 0  # multiply-adds count 2 FLOPs, as flop_counter counts them

    def __str__(self) -> str:
        rows = [(layer.name, layer.kind, "x".join(map(str, layer.output_shape)), f"{layer.params:,}")
                for layer in self.layers]
        header = ("layer", "type", "output (per image)", "params")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        line = "  ".join("-" * w for w in widths)

        def fmt(row: tuple[str, ...]) -> str:
            return "  ".join(c.rjust(w) if i == 3 else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

        return "\n".join([
            self.title, fmt(header), line, *map(fmt, rows), line,
            f"total parameters: {self.total_params:,} ({self.trainable_params:,} trainable, "
            f"{self.total_params - self.trainable_params:,} frozen)",
            f"forward FLOPs per image: {self.flops / 1e6:,.1f} M"
            f" ({self.flops / 2e6:,.1f} M multiply-adds)",
        ])

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # IPython shows the table
        printer.text(str(self))  # type: ignore[attr-defined]


def summarize(model: nn.Module, title: str = "model", input_shape: tuple[int, ...] = (3, 32, 32)
              ) -> ModelSummary:
    """Run one zero image through `model` in eval mode, recording every leaf layer's output."""
    summary = ModelSummary(title)
    hooks = []

    def keep(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            params = sum(p.numel() for p in module.parameters(recurse=False))
            trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
            summary.layers.append(Layer(name, type(module).__name__, shape, params, trainable))
        return hook

    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(keep(name)))
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    summary.flops = forward_flops(model, input_shape)
    summary.total_params = sum(p.numel() for p in model.parameters())
    summary.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return summary


def forward_flops(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """FLOPs of one image's forward pass (eval mode, no gradients: nothing in the model changes)."""
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_shape, device=device))
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
