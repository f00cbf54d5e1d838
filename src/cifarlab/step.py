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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import TrainConfig
from cifarlab.runtime import autocast


def loss_of(logits: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The training loss: mean cross-entropy in fp32, with the config's label smoothing.

    When `logits` hold several views of each labelled image (augment.consistency: the image, then
    mixed copies; augment.augment_batch stacks them), the cross-entropy of the first view plus
    `config.augment.consistency` times the Jensen-Shannon divergence between the views'
    predictions, as AugMix trains.
    """
    if len(logits) == len(labels):
        return F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    views = logits.float().split(len(labels))
    loss = F.cross_entropy(views[0], labels, label_smoothing=config.label_smoothing)
    return loss + config.augment.consistency * jensen_shannon(views)


def jensen_shannon(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean over views of KL(p_view || p_mean), averaged over the batch: zero when every view
    predicts the same distribution (AugMix clips p_mean at 1e-7 before its log; so do we)."""
    probs = [F.softmax(z, dim=1) for z in logits]
    log_mean = (torch.stack(probs).mean(0)).clamp(1e-7, 1).log()
    return torch.stack([F.kl_div(log_mean, p, reduction="batchmean") for p in probs]).mean()


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, config: TrainConfig,
               weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (bf16 autocast on GPUs), loss, backward, optimizer step; (loss, logits), detached.

    `images` may hold several views of each labelled image, stacked (see `loss_of`); the logits
    returned are then those of the first view.

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
    return loss.detach(), logits[:len(labels)].detach()  # the first view's, with several
