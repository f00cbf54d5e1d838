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


def loss_of(logits: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The training loss: mean cross-entropy in fp32, with the config's label smoothing."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, config: TrainConfig,
               weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (bf16 autocast on GPUs), loss, backward, optimizer step; (loss, logits), detached.

    `weight` scales the gradient: under DistributedDataParallel, which averages gradients over
    processes, weighting each process's mean loss by its share of the global batch makes that
    average the gradient of the global batch's mean loss, even when the batch splits unevenly.
    """
    with autocast(images.device):
        logits = net(images)
        loss = loss_of(logits, labels, config)
    optimizer.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    optimizer.step()
    return loss.detach(), logits.detach()
