"""optim.py: optimizer groups, the lr schedule, lookahead and Muon (checked against torch.optim.Muon)."""

from __future__ import annotations

import pytest
import torch

from cifarlab import optim
from cifarlab.api import make_config
from cifarlab.networks import create_model
from cifarlab.optim import Muon, lr_at


def test_optimizer_groups_and_frozen_whitening_bias() -> None:
    config = make_config("fast_sgd")
    model = create_model("fastnet_small", 10)
    optimizer = optim.build(config, model)
    groups = {round(g["lr_scale"]): g for g in optimizer.param_groups if "until_epoch" not in g}
    norm_shifts = [m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in groups[64]["params"]} == {id(p) for p in norm_shifts}
    assert groups[64]["weight_decay"] * 64 == pytest.approx(groups[1]["weight_decay"])
    whiten = [g for g in optimizer.param_groups if "until_epoch" in g]
    assert whiten[0]["params"] == [model.body.whiten.bias]
    frozen = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model.body.whiten.weight) not in frozen  # never trained
    optim.set_lr(optimizer, 0.5, epoch=2)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 32.0, 0.5]
    optim.set_lr(optimizer, 0.5, epoch=3)  # whiten_bias_epochs = 3
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 32.0, 0.0]


def test_lookahead_pulls_weights_to_their_average() -> None:
    model = torch.nn.Linear(2, 1)
    look = optim.Lookahead(model, batch_size=1024)
    assert look.every == 5
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    look.update(progress=1.0)  # decay 0.95^5: 77% stays with the average
    expected = start + (1 - 0.95 ** 5)
    assert torch.allclose(model.weight, expected) and torch.allclose(look.average["weight"], expected)
    with torch.no_grad():
        model.weight.add_(1.0)
    look.update(progress=0.0, final=True)  # the end: the weights become the average
    assert torch.allclose(model.weight, expected)


def test_orthogonalize_flattens_the_spectrum() -> None:
    g = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))
    g[:, :10] *= 100  # a few dominant directions, as in real gradients
    singular = torch.linalg.svdvals(optim.orthogonalize(g))  # airbench's 3 steps: approximate
    assert float(torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min()) > 50
    assert float(singular.max()) < 1.5 and float(singular.max() / singular.min()) < 5


def test_muon_moves_filters_at_a_fixed_norm_and_the_rest_by_sgd() -> None:
    config = make_config("fast")
    model = create_model("fastnet_small", 10)
    optimizer = optim.build(config, model)
    muon, *sgd = optimizer.param_groups
    assert muon["muon"] and all(p.ndim == 4 and p.shape[-1] == 3 for p in muon["params"])
    assert not any(g["muon"] for g in sgd)
    assert any(g.get("until_epoch") == 3 for g in sgd)  # the whitening bias, as in `fast`
    optim.set_lr(optimizer, config.lr, epoch=0)
    x = torch.rand(8, 3, 32, 32) * 255
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8))
    loss.backward()
    before = [p.detach().clone() for p in muon["params"]]
    optimizer.step()
    for p, old in zip(muon["params"], before, strict=True):
        assert not torch.equal(p, old)
        assert float(p.detach().norm()) == pytest.approx(len(p) ** 0.5, rel=0.05)  # normalised, then a step


def test_onecycle_schedule() -> None:
    config = make_config("base", lr=1.0, schedule="onecycle", warmup=0.2)
    assert lr_at(config, 0.0) == 0.0
    assert lr_at(config, 0.2) == pytest.approx(1.0)
    assert lr_at(config, 0.6) == pytest.approx(0.5)
    assert lr_at(config, 1.0) == 0.0


def test_onecycle_with_floor_and_start() -> None:
    config = make_config("base", lr=2.0, schedule="onecycle", warmup=0.25, lr_start=0.2, lr_end=0.1)
    assert lr_at(config, 0.0) == pytest.approx(0.4)
    assert lr_at(config, 0.25) == pytest.approx(2.0)
    assert lr_at(config, 1.0) == pytest.approx(0.2)
    assert lr_at(config, 0.625) == pytest.approx(1.1)


def test_one_muon_step_matches_torch_optim_muon() -> None:
    """An oracle: on its first step, a 2-D parameter held at cifarlab's norm (sqrt(rows)) moves as
    torch.optim.Muon moves it. Both orthogonalise the Nesterov update by the same Newton-Schulz
    coefficients; their momentum sums differ only by a scale on the first step, which the
    orthogonalisation removes. torch's iterates in bf16 (3 significant digits), ours in fp32: the
    two steps agree to ~1%, where a wrong coefficient, transpose or momentum would move them by
    tens of percent."""
    torch.manual_seed(0)
    start = torch.randn(16, 48)
    start *= 16 ** 0.5 / start.norm()
    grad = torch.randn(16, 48)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    mine = Muon([{"params": [ours], "muon": True, "momentum": 0.6}], lr=0.05)
    reference = torch.optim.Muon([theirs], lr=0.05, momentum=0.6, weight_decay=0.0, ns_steps=3)
    for param, optimizer in ((ours, mine), (theirs, reference)):
        param.grad = grad.clone()
        optimizer.step()
    ours_step, their_step = (ours - start).detach(), (theirs - start).detach()
    assert float((ours_step - their_step).norm() / their_step.norm()) < 0.02
