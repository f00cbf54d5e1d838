"""step.py: the one training step (forward, loss, backward, optimizer step) that the trainer, the
budget's speed probe and the lr finder share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import TrainConfig
from cifarlab.step import loss_of, train_step


def test_the_loss_is_cross_entropy_with_the_configs_label_smoothing() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    for smoothing in (0.0, 0.2):
        expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        assert torch.equal(loss_of(logits, labels, TrainConfig(label_smoothing=smoothing)), expected)


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
