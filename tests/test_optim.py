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


def test_adamw_decays_apart_from_the_gradient_as_keras() -> None:
    """With a zero gradient Adam's step is zero, so AdamW's weights only shrink by lr x decay;
    Adam's L2 decay instead goes through Adam's scaling and moves every weight by ~lr."""
    assert make_config("base", optimizer="adamw").weight_decay == 0.004  # Keras' default
    assert make_config("base", optimizer="adamw", weight_decay=0.0).weight_decay == 0.0
    assert make_config("fast", optimizer="adamw").weight_decay == 0.004  # not SGD's coupled decay
    moved = {}
    for name in ("adamw", "adam"):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        start = model.weight.detach().clone()
        optimizer = optim.build(make_config("base", optimizer=name, lr=0.1, weight_decay=0.5), model)
        assert optimizer.defaults["eps"] == 1e-7  # Keras' epsilon
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        moved[name] = model.weight.detach() - start
        if name == "adamw":
            torch.testing.assert_close(model.weight.detach(), start * (1 - 0.1 * 0.5))
    assert float(moved["adam"].abs().min()) > 0.09  # ~lr: sign(w) x lr, whatever |w|


def test_cosine_schedule_with_warmup_and_floor() -> None:
    config = make_config("base", lr=2.0, schedule="cosine", warmup=0.2, lr_start=0.1, lr_end=0.05)
    assert lr_at(config, 0.0) == pytest.approx(0.2)
    assert lr_at(config, 0.1) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert lr_at(config, 0.2) == pytest.approx(2.0)
    assert lr_at(config, 0.6) == pytest.approx(2.0 * (0.05 + 0.95 * 0.5))  # half-way down
    assert lr_at(config, 1.0) == pytest.approx(0.1)
    values = [lr_at(config, p / 100) for p in range(20, 101)]
    assert values == sorted(values, reverse=True)
    plain = make_config("base", lr=1.0, schedule="cosine")
    assert lr_at(plain, 0.0) == 1.0 and lr_at(plain, 1.0) == pytest.approx(0.0)


@pytest.mark.parametrize(("epochs", "steps"), [(10, 7), (30, 13), (12, 391)])
def test_step_schedule_drops_on_epoch_boundaries(epochs: int, steps: int) -> None:
    """StepLR: the lr of every step of epoch e is lr x factor^(e // step_every), whatever rounding
    progress = step / total_steps brings; and lr_end is a floor."""
    config = make_config("base", lr=1.0, epochs=epochs, schedule="step", step_every=3,
                         step_factor=0.5, lr_end=0.1)
    for epoch in range(epochs):
        for step in (0, 1, steps - 1):
            lr = lr_at(config, (epoch * steps + step) / (epochs * steps))
            assert lr == max(0.5 ** (epoch // 3), 0.1), (epoch, step)


def test_step_and_plateau_do_not_depend_on_the_runs_length() -> None:
    """What lets a step or plateau run be extended: a longer run has the same lr at each step."""
    rows = [{"val_acc": a, "val_loss": 1.0} for a in (0.5, 0.5, 0.5, 0.6)]
    for schedule in ({"schedule": "step", "step_every": 2}, {"schedule": "plateau"}):
        short, long = (make_config("base", epochs=e, **schedule) for e in (4, 9))
        for step in range(4 * 11):
            done = rows[:step // 11]
            assert lr_at(short, step / 44, done) == lr_at(long, step / 99, done)


def test_plateau_follows_the_monitor_like_keras() -> None:
    config = make_config("base", lr=1.0, schedule="plateau", plateau_patience=2,
                         plateau_factor=0.5, lr_end=0.2)
    accs = [0.5, 0.6, 0.6, 0.55, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    rows = [{"val_acc": a, "val_loss": 1 - a} for a in accs]
    # drops after epochs 4 (two without beating 0.6) and 7, 9, 11 (counting restarts after a drop)
    drops = [optim.plateau_drops(config, rows[:n]) for n in range(len(rows) + 1)]
    assert drops == [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4]
    assert [lr_at(config, 0.5, rows[:n]) for n in (0, 4, 7, 11)] == [1.0, 0.5, 0.25, 0.2]  # floor
    # val_loss: lower is better, and an epoch without val figures (NaN) is not counted
    by_loss = make_config("base", schedule="plateau", plateau_patience=1, monitor="val_loss")
    losses = [{"val_loss": v} for v in (1.0, 0.9, float("nan"), 0.8, 0.85, 0.95)]
    assert [optim.plateau_drops(by_loss, losses[:n]) for n in range(7)] == [0, 0, 0, 0, 0, 1, 2]


def test_warmup_starts_every_schedule() -> None:
    for schedule in ({"schedule": "constant"}, {"schedule": "step", "step_every": 10},
                     {"schedule": "plateau"}):
        config = make_config("base", lr=1.0, warmup=0.5, lr_start=0.2, **schedule)
        assert lr_at(config, 0.0) == pytest.approx(0.2)
        assert lr_at(config, 0.25) == pytest.approx(0.6)
    assert lr_at(make_config("base", lr=0.3), 0.0) == 0.3  # no warm-up unless asked
def test_whitening_bias_at_its_own_rate_falls_linearly_to_zero() -> None:
    """airbench94_muon: the whitening bias at the BatchNorm shifts' rate, down to 0 at its epochs."""
    config = make_config("fast", whiten_bias_lr_scale=36.2, whiten_bias_decay=True,
                         whiten_bias_epochs=0.5)
    model = create_model("fastnet_small", 10)
    optimizer = optim.build(config, model)
    whiten = next(g for g in optimizer.param_groups if "until_epoch" in g)
    assert whiten["params"] == [model.body.whiten.bias]
    # the same decay per step as the rest of the SGD groups: lr x weight_decay
    assert whiten["lr_scale"] * whiten["weight_decay"] == pytest.approx(config.weight_decay)
    for epoch, fraction in [(0.0, 1.0), (0.25, 0.5), (0.4, 0.2), (0.5, 0.0), (3.0, 0.0)]:
        optim.set_lr(optimizer, 0.1, epoch)  # the schedule's lr does not move this group
        assert whiten["lr"] == pytest.approx(config.lr * 36.2 * fraction)
    plain = optim.build(make_config("fast", whiten_bias_lr_scale=1.0, whiten_bias_decay=False), model)
    optim.set_lr(plain, 0.1, 2.9)
    assert next(g for g in plain.param_groups if "until_epoch" in g)["lr"] == pytest.approx(0.1)
