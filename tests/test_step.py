"""step.py: the one training step (forward, loss, backward, optimizer step) that the trainer, the
budget's speed probe and the lr finder share."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import TrainConfig, apply
from cifarlab.step import jensen_shannon, loss_of, train_step


def test_the_loss_is_cross_entropy_with_the_configs_label_smoothing() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    for smoothing in (0.0, 0.2):
        expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        assert torch.equal(loss_of(logits, labels, TrainConfig(label_smoothing=smoothing)), expected)


def test_soft_targets_and_class_weights() -> None:
    """Mixed images' class probabilities, and Keras' class_weight: the batch mean of each image's
    loss times its class's weight (torch's weight= would divide by the weights' sum instead)."""
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    one_hot = F.one_hot(labels, 5).float()
    config = TrainConfig(label_smoothing=0.1)
    torch.testing.assert_close(loss_of(logits, one_hot, config), loss_of(logits, labels, config))
    weights = torch.tensor([1.0, 2.0, 0.5, 0.0, 3.0])
    each = F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(loss_of(logits, labels, config, weights), (each * weights[labels]).mean())
    torch.testing.assert_close(loss_of(logits, labels, config, torch.ones(5)),
                               loss_of(logits, labels, config))
    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, 0)
    soft = F.cross_entropy(logits, mixed, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(loss_of(logits, mixed, config, weights),
                               (soft * (mixed @ weights)).mean())  # the mix of its classes' weights


def test_a_step_moves_the_weights_along_the_weighted_gradient() -> None:
    torch.manual_seed(0)
    images, labels = torch.randn(6, 4), torch.randint(0, 3, (6,))
    moved = []
    for weight in (1.0, 0.5):
        torch.manual_seed(1)
        net = nn.Linear(4, 3)
        before = net.weight.detach().clone()
        loss, logits = train_step(net, torch.optim.SGD(net.parameters(), lr=0.1), images, labels,
                                  TrainConfig(), weight=weight)
        assert not loss.requires_grad and not logits.requires_grad and logits.shape == (6, 3)
        assert torch.equal(loss, F.cross_entropy(logits, labels))  # the loss before the step
        moved.append(net.weight.detach() - before)
    torch.testing.assert_close(moved[1], 0.5 * moved[0])  # weight scales the gradient (DDP shares)


def test_one_definition_and_three_callers() -> None:
    """The trainer, the budget's probe and the lr finder train with the same step."""
    import cifarlab

    package = __import__("pathlib").Path(cifarlab.__file__).parent
    defining = [p.name for p in package.rglob("*.py") if "def train_step(" in p.read_text()]
    calling = sorted(p.name for p in package.rglob("*.py") if "train_step(" in p.read_text()
                     and "def train_step(" not in p.read_text())
    assert defining == ["step.py"] and calling == ["budget.py", "lrfind.py", "trainer.py"]


def test_views_add_augmixs_consistency_term() -> None:
    """Three views of each image: the first view's cross-entropy, plus consistency x the
    Jensen-Shannon divergence, which is zero for agreeing views and at most log 3."""
    torch.manual_seed(0)
    config = apply(TrainConfig(), {"augment.augmix": True, "augment.consistency": 12.0})
    labels, first = torch.randint(0, 5, (8,)), torch.randn(8, 5)
    agreeing = torch.cat([first, first, first])
    assert torch.allclose(loss_of(agreeing, labels, config), F.cross_entropy(first, labels))
    views = [first, torch.randn(8, 5), 5 * torch.randn(8, 5)]
    divergence = jensen_shannon(views)
    assert 0 < float(divergence) <= math.log(3)
    assert torch.allclose(loss_of(torch.cat(views), labels, config),
                          F.cross_entropy(first, labels) + 12.0 * divergence)
    # Against the textbook form: the entropy of the mean minus the mean of the entropies.
    probs = torch.stack([F.softmax(v, 1) for v in views])
    entropy = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    textbook = (entropy(probs.mean(0)) - entropy(probs).mean(0)).mean()
    torch.testing.assert_close(divergence, textbook, rtol=1e-4, atol=1e-6)


def test_a_step_on_views_returns_the_first_views_logits() -> None:
    torch.manual_seed(0)
    config = apply(TrainConfig(), {"augment.prime": True, "augment.consistency": 1.0})
    net = nn.Linear(4, 3)
    images, labels = torch.randn(18, 4), torch.randint(0, 3, (6,))
    loss, logits = train_step(net, torch.optim.SGD(net.parameters(), lr=0.1), images, labels, config)
    assert logits.shape == (6, 3) and float(loss) > float(F.cross_entropy(logits, labels)) - 1e-6
