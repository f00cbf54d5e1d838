"""The trainer: the run folder, determinism, exact resume (the fast recipes too), low-res epochs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cifarlab import callbacks as cl_callbacks
from cifarlab import checkpoint, rundir, trainer
from cifarlab.api import make_config
from cifarlab.errors import Interrupted, TrainingError, UserError
from cifarlab.networks import create_model
from conftest import InterruptAfter, read_metrics, tiny_config


def toy_fast(data: Path, **overrides: Any) -> Any:
    settings = {"epochs": 3, "batch_size": 64, "val_fraction": 0.2, "seed": 1, "device": "cpu",
                "clean_train_size": 64}
    settings.update(overrides)
    return make_config("fast_small", data=str(data), **settings)


def test_run_directory(toy_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _, summary = trainer.train(tiny_config(toy_data), out=run, quiet=True)
    assert {p.name for p in run.iterdir()} == {".cifarlab-run", "config.json", "metrics.csv",
                                               "summary.json", "model.pt", "best.pt",
                                               "checkpoint.pt"}
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == rundir.METRIC_COLUMNS
    saved = json.loads((run / "summary.json").read_text())
    for key in ("recipe", "epochs", "train_acc", "train_acc_clean", "val_acc", "best_val_acc",
                "seconds_per_epoch", "total_seconds"):
        assert key in saved
    assert saved == json.loads(json.dumps(summary))
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["recipe"] == "base" and config["versions"]["torch"] == torch.__version__
    assert config["classes"] == ["a", "b", "c", "d"]
    assert summary["val_acc"] > 0.5  # toy classes differ by colour: easy to learn
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_same_seed_same_numbers(toy_data: Path, tmp_path: Path) -> None:
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "train_acc_clean")
    runs = [trainer.train(tiny_config(toy_data, "robust", seed=s), out=tmp_path / f"r{i}", quiet=True)[1]
            for i, s in enumerate((4, 4, 5))]
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]
    assert [runs[0][k] for k in keys] != [runs[2][k] for k in keys]


@pytest.mark.slow
@pytest.mark.parametrize("limit", [5, 15])  # mid-epoch 1, and mid-epoch 2
def test_interrupt_and_resume_is_exact(toy_data: Path, tmp_path: Path, limit: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(toy_data, "robust", epochs=3)
    trainer.train(config, out=tmp_path / "straight", quiet=True)

    with pytest.raises(Interrupted):
        trainer.train(tiny_config(toy_data, "robust", epochs=3), out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(limit + 1)])
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    assert not (tmp_path / "cut" / "model.pt").exists()
    trainer.resume(tmp_path / "cut", quiet=True)

    def without_time(run: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(run)]

    assert without_time(tmp_path / "cut") == without_time(tmp_path / "straight")
    a, _ = checkpoint.load_model(tmp_path / "straight", weights="final")
    b, _ = checkpoint.load_model(tmp_path / "cut", weights="final")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_resume_refuses_finished_and_out_refuses_existing(toy_data: Path, tmp_path: Path) -> None:
    trainer.train(tiny_config(toy_data, epochs=1), out=tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="already complete"):
        trainer.resume(tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="already holds a run"):
        trainer.train(tiny_config(toy_data, epochs=1), out=tmp_path / "run", quiet=True)


def test_nan_loss_stops_with_clear_message(toy_data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step \d+"):
        trainer.train(tiny_config(toy_data, lr=math.inf), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_fast_recipe_trains_and_reports_tta(toy_data: Path, tmp_path: Path) -> None:
    _, summary = trainer.train(toy_fast(toy_data), out=tmp_path / "run", quiet=True)
    losses = [float(row["train_loss"]) for row in read_metrics(tmp_path / "run")]
    assert losses[-1] < losses[0] and 0 <= summary["val_acc_tta"] <= 1
    assert summary["peak_rss_mb"] > 0 and summary["wall_seconds"] >= summary["total_seconds"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["val_acc_tta"] == summary["val_acc_tta"]


@pytest.mark.slow
def test_fast_interrupt_and_resume_is_exact(toy_data: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The whitening bias (decaying, frozen mid-epoch 2) and colour jitter survive a resume
    mid-epoch."""
    settings = {"whiten_bias_epochs": 1.5, "whiten_bias_decay": True,
                "augment": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1}}
    config = toy_fast(toy_data, **settings)
    trainer.train(config, out=tmp_path / "straight", quiet=True)
    with pytest.raises(Interrupted):  # 6 steps per epoch: mid-epoch 2, off the 5-step grid
        trainer.train(toy_fast(toy_data, **settings), out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(9)])
    trainer.resume(tmp_path / "cut", quiet=True)
    assert read_metrics(tmp_path / "cut")[-1]["val_acc"] == read_metrics(
        tmp_path / "straight")[-1]["val_acc"]
    a, _ = checkpoint.load_model(tmp_path / "straight")
    b, _ = checkpoint.load_model(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_mixed_chains_resume_exactly(toy_data: Path, tmp_path: Path) -> None:
    """AugMix + PRIME chains and their consistency views draw from the step's generator alone: a
    run cut mid-epoch and resumed ends with the same weights as one that was never stopped."""
    settings = {"augment": {"translate": 2, "augmix": True, "prime": True, "mix_share": 0.5,
                            "consistency": 12.0}}
    trainer.train(toy_fast(toy_data, epochs=2, **settings), out=tmp_path / "straight", quiet=True)
    with pytest.raises(Interrupted):  # 6 steps per epoch: mid-epoch 2
        trainer.train(toy_fast(toy_data, epochs=2, **settings), out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(8)])
    trainer.resume(tmp_path / "cut", quiet=True)
    a, _ = checkpoint.load_model(tmp_path / "straight", weights="final")
    b, _ = checkpoint.load_model(tmp_path / "cut", weights="final")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # ... and the chains did change what the model learned.
    plain = trainer.train(toy_fast(toy_data, epochs=2), out=tmp_path / "plain", quiet=True)[1]
    mixed = float(read_metrics(tmp_path / "straight")[-1]["train_loss"])
    assert plain["train_loss"] != pytest.approx(mixed)


@pytest.mark.slow
def test_muon_run_resumes_exactly(toy_data: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("fast", data=str(toy_data), epochs=2, batch_size=64, val_fraction=0.2,
                         device="cpu", tta=False, model="fastnet_small")
    trainer.train(config, out=tmp_path / "straight", quiet=True)
    with pytest.raises(Interrupted):
        trainer.train(config, out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(5)])
    trainer.resume(tmp_path / "cut", quiet=True)
    a, _ = checkpoint.load_model(tmp_path / "straight", weights="final")
    b, _ = checkpoint.load_model(tmp_path / "cut", weights="final")
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.slow
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


def test_low_res_with_a_fixed_size_head_is_one_line(toy_data: Path, tmp_path: Path) -> None:
    config = make_config("base", data=str(toy_data), epochs=2, low_res_share=0.5, device="cpu")
    with pytest.raises(UserError, match="fails on a batch of 2 x 3 x 24 x 24 images \\(low_res_share"):
        trainer.train(config, out=tmp_path / "run", quiet=True)


# One run per setting of issue 20, each resumed mid-epoch 3 (12 steps an epoch): the plateau
# schedule has then cut the lr once (toy val_acc reaches 1.0 in epoch 1 and cannot beat it).
SETTINGS = {
    "adamw": {"optimizer": "adamw"},
    "cosine": {"schedule": "cosine", "warmup": 0.3, "lr_start": 0.1, "lr_end": 0.1},
    "step": {"schedule": "step", "step_every": 1, "step_factor": 0.5},
    "plateau": {"schedule": "plateau", "plateau_patience": 1},
    "cutout+erasing": {"augment": {"cutout": 8, "erasing": 0.5}},
    "mixup+cutmix": {"augment": {"mixup": 0.4, "cutmix": 1.0}},
    "class_weight": {"class_weight": {"a": 2.0, "c": 0.5}},
}


def without_time(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in read_metrics(run)]


def same_weights(a: Path, b: Path) -> None:
    first, _ = checkpoint.load_model(a, weights="final")
    second, _ = checkpoint.load_model(b, weights="final")
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.slow
@pytest.mark.parametrize("setting", SETTINGS)
def test_each_new_setting_resumes_exactly(toy_data: Path, tmp_path: Path, setting: str) -> None:
    config = tiny_config(toy_data, epochs=3, **SETTINGS[setting])
    trainer.train(config, out=tmp_path / "straight", quiet=True)
    with pytest.raises(Interrupted):
        trainer.train(config, out=tmp_path / "cut", quiet=True, callbacks=[InterruptAfter(30)])
    trainer.resume(tmp_path / "cut", quiet=True)
    rows = without_time(tmp_path / "cut")
    assert rows == without_time(tmp_path / "straight")
    same_weights(tmp_path / "straight", tmp_path / "cut")
    if setting == "plateau":  # the resume continued after a cut, at the cut lr
        assert float(rows[2]["lr"]) < float(rows[0]["lr"])


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["step", "plateau"])
def test_step_and_plateau_runs_extend_as_if_run_straight(toy_data: Path, tmp_path: Path,
                                                         setting: str) -> None:
    """Their lr depends on the epoch (and the val figures), not on the run's length."""
    trainer.train(tiny_config(toy_data, epochs=3, **SETTINGS[setting]), out=tmp_path / "straight",
                  quiet=True)
    trainer.train(tiny_config(toy_data, epochs=2, **SETTINGS[setting]), out=tmp_path / "short",
                  quiet=True)
    trainer.resume(tmp_path / "short", {"epochs": 3}, quiet=True)
    assert without_time(tmp_path / "short") == without_time(tmp_path / "straight")


def test_cosine_runs_cannot_be_extended_and_class_weights_name_real_classes(
        toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer.train(tiny_config(toy_data, epochs=1, schedule="cosine", class_weight="balanced",
                              subset=64), out=tmp_path / "run")
    assert "class weights in the training loss (balanced): a " in capsys.readouterr().out
    with pytest.raises(UserError, match="a cosine schedule laid out for 1 epoch; it cannot be "
                                        "extended"):
        trainer.resume(tmp_path / "run", {"epochs": 2}, quiet=True)
    with pytest.raises(UserError, match="class_weight names 'zebra'"):
        trainer.train(tiny_config(toy_data, class_weight={"zebra": 2.0}), out=tmp_path / "bad",
                      quiet=True)
    assert not (tmp_path / "bad").exists()


def test_ctrl_c_inside_a_callback_is_interrupted_with_a_checkpoint(toy_data: Path, tmp_path: Path) -> None:
    """A KeyboardInterrupt that lands in a callback (a slow live plot, a second Ctrl-C) ends
    training as Ctrl-C does: cl.Interrupted, and the last checkpoint resumes."""
    from cifarlab.callbacks import Callback

    class PressedDuringThePlot(Callback):
        def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        trainer.train(tiny_config(toy_data), out=tmp_path / "run", quiet=True,
                      callbacks=[PressedDuringThePlot()])
    assert caught.value.run_dir == tmp_path / "run" and "cl.resume(" in str(caught.value)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    trainer.resume(tmp_path / "run", quiet=True)
    assert len(read_metrics(tmp_path / "run")) == 2
@pytest.mark.slow
def test_whitening_bias_stops_mid_epoch(toy_data: Path, tmp_path: Path) -> None:
    """Fractions of an epoch count: 0.5 and 0.9 epochs of bias training end apart, in epoch 1."""
    biases: dict[float, list[torch.Tensor]] = {0.5: [], 0.9: []}
    for epochs, seen in biases.items():
        config = toy_fast(toy_data, epochs=2, whiten_bias_epochs=epochs, whiten_bias_decay=True,
                          tta=False, calibrate=False)
        trainer.train(config, out=tmp_path / str(epochs), quiet=True, callbacks=[
            lambda run, metrics, seen=seen: seen.append(run.model.body.whiten.bias.detach().clone())])
        assert torch.equal(seen[0], seen[1])  # frozen in epoch 2
    assert not torch.equal(biases[0.5][0], biases[0.9][0])


@pytest.mark.slow
def test_eval_every_skips_evaluation_but_not_training(toy_data: Path, tmp_path: Path) -> None:
    """eval_every 0: empty cells until the last epoch, whose figures, weights, TTA and temperature
    are those of a run that evaluates every epoch (evaluation draws nothing at random)."""
    runs = {k: trainer.train(toy_fast(toy_data, eval_every=k), out=tmp_path / str(k), quiet=True)[1]
            for k in (0, 1)}
    sparse, full = read_metrics(tmp_path / "0"), read_metrics(tmp_path / "1")
    assert [r["val_acc"] == "" and r["train_acc_clean"] == "" for r in sparse] == [True, True, False]
    assert all(r["val_acc"] != "" for r in full)
    assert sparse[-1] | {"seconds": 0, "train_seconds": 0} == full[-1] | {"seconds": 0, "train_seconds": 0}
    for key in ("val_acc", "val_acc_tta", "temperature", "ece"):
        assert runs[0][key] == runs[1][key], key
    a, _ = checkpoint.load_model(tmp_path / "0", weights="best")
    b, _ = checkpoint.load_model(tmp_path / "0", weights="final")
    assert runs[0]["best_epoch"] == 3  # the only evaluated epoch: best.pt holds the final weights
    assert float(a.temperature) == float(b.temperature) == pytest.approx(runs[0]["temperature"])
    assert runs[0]["temperature"] != 1.0


def test_stopping_between_evaluations_measures_the_last_epoch(toy_data: Path, tmp_path: Path) -> None:
    class StopAt2(cl_callbacks.Callback):
        def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
            if metrics["epoch"] == 2:
                trainer.stop()

    _, summary = trainer.train(toy_fast(toy_data, epochs=5, eval_every=3, tta=False, calibrate=False),
                               out=tmp_path / "run", quiet=True, callbacks=[StopAt2()])
    rows = read_metrics(tmp_path / "run")
    assert [r["val_acc"] != "" for r in rows] == [False, True]
    assert summary["stopped_early"] and summary["val_acc"] == float(rows[-1]["val_acc"])
    saved = checkpoint.load(tmp_path / "run" / rundir.CHECKPOINT, checkpoint.CHECKPOINT_FORMAT)
    assert saved["history"][-1]["val_acc"] == summary["val_acc"]  # the checkpoint has it too


def test_early_stop_needs_evaluations() -> None:
    with pytest.raises(UserError, match="eval_every"):
        make_config("fast", early_stop=2, eval_every=0)


@pytest.mark.slow
def test_a_last_epoch_cut_short_trains_its_share_and_resumes_exactly(toy_data: Path,
                                                                     tmp_path: Path) -> None:
    """last_epoch_share (the budget's fill): 6 steps, then 3 of 6; the schedule ends on the last
    of them; an interruption inside the short epoch resumes to the same weights."""
    lrs: list[float] = []

    class Steps(cl_callbacks.Callback):
        def on_step_end(self, trainer: Any, step: dict[str, float]) -> None:
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    config = toy_fast(toy_data, epochs=2, last_epoch_share=0.5, tta=False, calibrate=False)
    _, summary = trainer.train(config, out=tmp_path / "straight", quiet=True, callbacks=[Steps()])
    assert len(lrs) == 6 + 3
    assert lrs[-1] == pytest.approx(config.muon_lr / 9)  # the linear decay's last step of 9
    assert summary["train_images_per_second"] > 0
    with pytest.raises(Interrupted):
        trainer.train(config, out=tmp_path / "cut", quiet=True, callbacks=[InterruptAfter(8)])
    trainer.resume(tmp_path / "cut", quiet=True)
    a, _ = checkpoint.load_model(tmp_path / "straight")
    b, _ = checkpoint.load_model(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_figures_read_every_few_steps_are_the_figures_read_every_step(
        toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the step figures stay on the device and are read every TALLY_EVERY steps: the
    same metrics, every step reported to callbacks in order with the same running figures, a
    checkpoint on its own step, a stop on the next read that resumes exactly, a NaN named at
    its own step. Here on the CPU, made to read every 5 steps (12 steps an epoch)."""
    def steps_of(run: str, tally: int, **settings: Any) -> list[dict[str, float]]:
        monkeypatch.setattr(trainer, "tally_every", lambda device, tally=tally: tally)
        steps: list[dict[str, float]] = []

        class Steps(cl_callbacks.Callback):
            def on_step_end(self, trainer: Any, step: dict[str, float]) -> None:
                steps.append(step)

        trainer.train(tiny_config(toy_data, **settings), out=tmp_path / run, quiet=True,
                      callbacks=[Steps()])
        return steps

    every_step = steps_of("every", 1, checkpoint_every=7)
    assert steps_of("fifth", 5, checkpoint_every=7) == every_step and len(every_step) == 24
    assert without_time(tmp_path / "fifth") == without_time(tmp_path / "every")

    with pytest.raises(Interrupted):  # asked after step 6: steps 6-10 are read together
        trainer.train(tiny_config(toy_data), out=tmp_path / "cut", quiet=True,
                      callbacks=[InterruptAfter(6)])
    state = torch.load(tmp_path / "cut" / rundir.CHECKPOINT, weights_only=False)["epoch_state"]
    assert state["step"] == 10
    trainer.resume(tmp_path / "cut", quiet=True)
    same_weights(tmp_path / "cut", tmp_path / "every")

    where = []
    for tally in (1, 5):
        monkeypatch.setattr(trainer, "tally_every", lambda device, tally=tally: tally)
        with pytest.raises(TrainingError, match="loss became nan") as error:
            trainer.train(tiny_config(toy_data, lr=math.inf), out=tmp_path / f"nan{tally}", quiet=True)
        where.append(str(error.value).split(", lr")[0])
    assert where[0] == where[1]


def test_compile_compiles_the_network_in_place(toy_data: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`compile` (for GPUs) compiles the network once, in place, so its saved weights keep
    their names; the compiler itself is not run here (a minute on this CPU, and slower)."""
    compiled: list[type] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self)))
    trainer.train(tiny_config(toy_data, epochs=1, compile=True), out=tmp_path / "run", quiet=True)
    model, _ = checkpoint.load_model(tmp_path / "run")
    assert compiled == [type(model)]
