"""One training step, written once: the trainer, the budget's speed probe and the lr finder all
call `train_step`, so the step they time or test is the step that trains.

    >>> import torch
    >>> from torch import nn
    >>> from cifarlab.config import TrainConfig
    >>> from cifarlab.step import train_step
    >>> net = nn.Linear(4, 3)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> loss, logits = train_step(net, opt, torch.randn(8, 4), torch.zeros(8, dtype=torch.long),
    ...                           TrainConfig())
    >>> logits.shape
    torch.Size([8, 3])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import TrainConfig
from cifarlab.runtime import autocast


def loss_of(logits: torch.Tensor, targets: torch.Tensor, config: TrainConfig,
            class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: mean cross-entropy in fp32, with the config's label smoothing.

    `targets` are class indices (N,), or class probabilities (N, K) where mixup or cutmix mixed
    the images (augment.mix_batch). `class_weights` (K,) weigh each image's loss by its class's
    weight (a mixed image's by its mix of classes), then average over the batch: Keras'
    class_weight, which divides by the batch size (torch's `weight=` divides by the weights' sum).
    """
    logits = logits.float()
    if class_weights is None:
        return F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
    losses = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing,
                             reduction="none")
    weights = class_weights[targets] if targets.ndim == 1 else targets @ class_weights
    return (losses * weights).mean()


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: torch.Tensor, config: TrainConfig, weight: float = 1.0,
               class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (bf16 autocast on GPUs), loss, backward, optimizer step; (loss, logits), detached.

    `targets` and `class_weights` as in `loss_of`. `weight` scales the gradient: under
    DistributedDataParallel, which averages gradients over processes, weighting each process's
    mean loss by its share of the global batch makes that average the gradient of the global
    batch's mean loss, even when the batch splits unevenly.
    """
    with autocast(images.device):
        logits = net(images)
        loss = loss_of(logits, targets, config, class_weights)
    optimizer.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    optimizer.step()
    return loss.detach(), logits.detach()
