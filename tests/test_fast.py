"""The `fast` recipe's machinery: optimizer groups, lookahead, alternating flips, budget, trials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cifarlab import budget, checkpoint, optim, trainer
from cifarlab.augment import flip_where
from cifarlab.cli import main
from cifarlab.config import RECIPES, make_config
from cifarlab.errors import Interrupted, UserError
from cifarlab.evaluate import predict_logits
from cifarlab.networks import create_model
from conftest import StopAfter, read_metrics


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARLAB_THREADS", "1")


def toy_fast(data: Path, **overrides: Any) -> Any:
    settings = {"epochs": 3, "batch_size": 64, "val_fraction": 0.2, "seed": 1, "device": "cpu",
                "clean_train_size": 64}
    settings.update(overrides)
    return make_config("fast_small", data=str(data), **settings)


def test_fast_settings_are_airbench_per_image() -> None:
    fast = make_config("fast_sgd")
    assert fast.model == "fastnet" and fast.optimizer == "sgd" and fast.lookahead and fast.tta
    assert fast.lr * 1024 / fast.batch_size == pytest.approx(1.5)  # airbench's 11.5 / 7.67
    assert fast.lr * fast.weight_decay * 1024 / fast.batch_size == pytest.approx(0.0153 * 1024
                                                                                / 7850, rel=1e-3)
    assert RECIPES["fast_small"].settings["model"] == "fastnet_small"
    muon = make_config("fast")  # airbench94_muon: the same SGD for all but the conv filters
    assert (muon.optimizer, muon.epochs, muon.lookahead) == ("muon", 8, False)
    assert (muon.lr, muon.weight_decay) == (fast.lr, fast.weight_decay)


def test_renamed_recipes_still_read() -> None:
    assert make_config("fast_muon") == make_config("fast")


def test_sgd_lr_follows_the_batch_size_unless_given() -> None:
    assert make_config("fast", batch_size=512).lr == pytest.approx(0.75)
    assert make_config("fast", batch_size=512, lr=0.1).lr == 0.1
    assert make_config("base", batch_size=128).lr == 1e-3  # Adam: the seed's lr stays


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


def test_flip_where_mirrors_only_the_masked_images() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    out = flip_where(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(2)) and torch.equal(out[1], x[1])


def test_fast_recipe_trains_and_reports_tta(toy_data: Path, tmp_path: Path) -> None:
    _, summary = trainer.train(toy_fast(toy_data), out=tmp_path / "run", quiet=True)
    losses = [float(row["train_loss"]) for row in read_metrics(tmp_path / "run")]
    assert losses[-1] < losses[0] and 0 <= summary["val_acc_tta"] <= 1
    assert summary["peak_rss_mb"] > 0 and summary["wall_seconds"] >= summary["total_seconds"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["val_acc_tta"] == summary["val_acc_tta"]


def test_fast_interrupt_and_resume_is_exact(toy_data: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookahead's average and the frozen whitening bias survive a resume mid-epoch."""
    config = toy_fast(toy_data, whiten_bias_epochs=1)
    trainer.train(config, out=tmp_path / "straight", quiet=True)
    monkeypatch.setattr(trainer, "_StopFlag", StopAfter)
    StopAfter.limit, StopAfter.reads = 9, 0  # 6 steps per epoch: mid-epoch 2, off the 5-step grid
    with pytest.raises(Interrupted):
        trainer.train(toy_fast(toy_data, whiten_bias_epochs=1), out=tmp_path / "cut", quiet=True)
    monkeypatch.setattr(trainer, "_StopFlag", StopAfter.__mro__[1])
    trainer.resume(tmp_path / "cut", quiet=True)
    assert read_metrics(tmp_path / "cut")[-1]["val_acc"] == read_metrics(
        tmp_path / "straight")[-1]["val_acc"]
    a, _ = checkpoint.load_model(tmp_path / "straight")
    b, _ = checkpoint.load_model(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_mixed_chains_resume_exactly(toy_data: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """AugMix + PRIME chains draw from the step's generator alone: a run cut mid-epoch and
    resumed ends with the same weights as one that was never stopped."""
    settings = {"augment": {"translate": 2, "augmix": True, "prime": True, "mix_share": 0.5}}
    trainer.train(toy_fast(toy_data, epochs=2, **settings), out=tmp_path / "straight", quiet=True)
    monkeypatch.setattr(trainer, "_StopFlag", StopAfter)
    StopAfter.limit, StopAfter.reads = 8, 0  # 6 steps per epoch: mid-epoch 2
    with pytest.raises(Interrupted):
        trainer.train(toy_fast(toy_data, epochs=2, **settings), out=tmp_path / "cut", quiet=True)
    monkeypatch.setattr(trainer, "_StopFlag", StopAfter.__mro__[1])
    trainer.resume(tmp_path / "cut", quiet=True)
    a, _ = checkpoint.load_model(tmp_path / "straight", weights="final")
    b, _ = checkpoint.load_model(tmp_path / "cut", weights="final")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # ... and the chains did change what the model learned.
    c = trainer.train(toy_fast(toy_data, epochs=2), out=tmp_path / "plain", quiet=True)[1]
    assert c["train_loss"] != pytest.approx(float(read_metrics(tmp_path / "straight")[-1]["train_loss"]))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600),
                                               ("1.5h", 5400), (" 2min ", 120)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "-5m", "0", "5d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UserError, match="budget"):
        budget.parse_duration(text)


@pytest.mark.parametrize(("seconds", "epochs", "subset"),
                         [(1000, 5, None), (600, 3, None), (100, 1, 21504), (60, 1, 11776)])
def test_size_to_budget(seconds: float, epochs: int, subset: int | None,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 s per step of 256, 1 ms per evaluated image: an epoch of 45,000 is 176 + 10 s of eval
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (1.0, 0.001))
    config = make_config("fast", budget=float(seconds), tta=False)
    config = budget.fit(config, 45_000, 5_000, 10, torch.device("cpu"), None, spent=0.0, quiet=True)
    assert (config.epochs, config.subset) == (epochs, subset)
    # what it plans fits: epochs x (steps + eval + writes) + final save
    steps = (config.subset or 45_000) / 256
    assert config.epochs * (steps + 10 + 0.3) + 2 <= seconds


def test_too_small_a_budget_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (5.0, 0.01))
    config = make_config("fast", budget=30.0)
    with pytest.raises(UserError, match="too short"):
        budget.fit(config, 45_000, 5_000, 10, torch.device("cpu"), None, 0.0, quiet=True)


def test_budget_and_trials_from_the_command_line(toy_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trials"
    code = main(["train", "--recipe", "fast_small", "--data", str(toy_data), "--val-fraction",
                 "0.2", "--batch-size", "64", "--budget", "1h", "--epochs", "2", "--trials", "2",
                 "--out", str(out), "--quiet"])
    assert code == 0
    trials = json.loads((out / "trials.json").read_text())
    assert [s["val_acc"] for s in trials["summaries"]] == [
        json.loads((out / f"seed-{s}" / "summary.json").read_text())["val_acc"] for s in (0, 1)]
    mean, std = trials["mean_std"]["val_acc"]
    assert min(s["val_acc"] for s in trials["summaries"]) <= mean <= max(
        s["val_acc"] for s in trials["summaries"]) and std >= 0
    config = json.loads((out / "seed-0" / "config.json").read_text())["config"]
    assert (config["budget"], config["epochs"]) == (3600, 2)  # sized, capped, recorded
    assert "+-" in capsys.readouterr().out

    assert main(["evaluate", str(out / "seed-0"), "--tta", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] is True and 0 <= result["accuracy"] <= 1


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
        assert float(p.norm()) == pytest.approx(len(p) ** 0.5, rel=0.05)  # normalised, then a step


def test_muon_run_resumes_exactly(toy_data: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("fast", data=str(toy_data), epochs=2, batch_size=64, val_fraction=0.2,
                         device="cpu", tta=False, model="fastnet_small")
    trainer.train(config, out=tmp_path / "straight", quiet=True)
    monkeypatch.setattr(trainer, "_StopFlag", StopAfter)
    StopAfter.limit, StopAfter.reads = 4, 0
    with pytest.raises(Interrupted):
        trainer.train(config, out=tmp_path / "cut", quiet=True)
    monkeypatch.setattr(trainer, "_StopFlag", StopAfter.__mro__[1])
    trainer.resume(tmp_path / "cut", quiet=True)
    a, _ = checkpoint.load_model(tmp_path / "straight", weights="final")
    b, _ = checkpoint.load_model(tmp_path / "cut", weights="final")
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_tta_on_the_least_confident_share_only() -> None:
    torch.manual_seed(0)
    model = create_model("fastnet_small", 10)
    model.eval()
    images = torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8).numpy()
    plain = predict_logits(model, images, torch.device("cpu"))
    full = predict_logits(model, images, torch.device("cpu"), tta=True)
    part = predict_logits(model, images, torch.device("cpu"), tta=True, tta_fraction=0.25)
    changed = (part != plain).any(1)
    assert int(changed.sum()) == 10  # a quarter of 40
    unsure = torch.argsort(plain.softmax(1).max(1).values)[:10]
    assert set(torch.nonzero(changed).flatten().tolist()) == set(unsure.tolist())
    torch.testing.assert_close(part[changed], full[changed])


def test_low_res_epochs_train_on_smaller_images(toy_data: Path, tmp_path: Path) -> None:
    sizes: list[tuple[int, int]] = []  # (epoch, side) of every training batch

    class Recorder(torch.nn.Module):
        def __init__(self, num_classes: int = 4) -> None:
            super().__init__()
            self.net = create_model("fastnet_small", num_classes).body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                sizes.append((len(records), x.shape[-1]))
            return self.net(x)

    records: list[int] = []
    config = toy_fast(toy_data, epochs=4, low_res_share=0.5, low_res=16, tta=False,
                      calibrate=False)
    trainer.train(config, out=tmp_path / "run", model=Recorder(),
                  callbacks=[lambda run, metrics: records.append(metrics["epoch"])], quiet=True)
    by_epoch = {epoch: {side for e, side in sizes if e == epoch} for epoch, _ in sizes}
    assert by_epoch == {0: {16}, 1: {16}, 2: {32}, 3: {32}}


def test_budget_counts_low_res_epochs_as_cheaper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "measure_rates", lambda *a, **k: (1.0, 0.001))
    plain = make_config("fast", budget=1000.0, tta=False)
    resized = make_config("fast", budget=1000.0, tta=False, low_res_share=0.5)
    fitted = [budget.fit(c, 45_000, 5_000, 10, torch.device("cpu"), None, 0.0, quiet=True)
              for c in (plain, resized)]
    # 970 s planned: 5 full epochs of 176 steps + 10.3 s fit (931 s), 6 do not (1,118 s); with 3
    # of 6 at 24 px (0.5625 of a step) 6 fit (887 s), and 7 with 4 at 24 px do not (996 s)
    assert fitted[0].epochs == 5 and fitted[1].epochs == 6


def test_low_res_with_a_fixed_size_head_is_one_line(toy_data: Path, tmp_path: Path) -> None:
    config = make_config("base", data=str(toy_data), epochs=2, low_res_share=0.5, device="cpu")
    with pytest.raises(UserError, match="fails on a batch of 2 x 3 x 24 x 24 images \\(low_res_share"):
        trainer.train(config, out=tmp_path / "run", quiet=True)
