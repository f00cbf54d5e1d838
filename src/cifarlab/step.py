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


def loss_of(logits: torch.Tensor, targets: torch.Tensor, config: TrainConfig,
            class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: mean cross-entropy in fp32, with the config's label smoothing.

    `targets` are class indices (N,), or class probabilities (N, K) where mixup or cutmix mixed
    the images (augment.mix_batch). `class_weights` (K,) weigh each image's loss by its class's
    weight (a mixed image's by its mix of classes), then average over the batch: Keras'
    class_weight, which divides by the batch size (torch's `weight=` divides by the weights' sum).

    When `logits` hold several views of each image (augment.consistency: the image, then mixed
    copies, stacked by augment.augment_batch), the cross-entropy is the first view's, plus
    `config.augment.consistency` times the Jensen-Shannon divergence between the views'
    predictions, as AugMix trains.
    """
    views = logits.float().split(len(targets))
    loss = F.cross_entropy(views[0], targets, label_smoothing=config.label_smoothing,
                           reduction="mean" if class_weights is None else "none")
    if class_weights is not None:
        weights = class_weights[targets] if targets.ndim == 1 else targets @ class_weights
        loss = (loss * weights).mean()
    if len(views) > 1:
        loss = loss + config.augment.consistency * jensen_shannon(views)
    return loss


def jensen_shannon(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean over views of KL(p_view || p_mean), averaged over the batch: zero when every view
    predicts the same distribution (AugMix clips p_mean at 1e-7 before its log; so do we)."""
    probs = [F.softmax(z, dim=1) for z in logits]
    log_mean = (torch.stack(probs).mean(0)).clamp(1e-7, 1).log()
    return torch.stack([F.kl_div(log_mean, p, reduction="batchmean") for p in probs]).mean()


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: torch.Tensor, config: TrainConfig, weight: float = 1.0,
               class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (bf16 autocast on GPUs), loss, backward, optimizer step; (loss, logits), detached.

    `targets` and `class_weights` as in `loss_of`; `images` may hold several views of each
    image, stacked (see `loss_of`), and the logits returned are then those of the first view.

    `weight` scales the gradient: under DistributedDataParallel, which averages gradients over
    processes, weighting each process's mean loss by its share of the global batch makes that
    average the gradient of the global batch's mean loss, even when the batch splits unevenly.
    """
    with autocast(images.device):
        logits = net(images)
        loss = loss_of(logits, targets, config, class_weights)
    optimizer.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    optimizer.step()
    return loss.detach(), logits[:len(targets)].detach()  # the first view's, with several
