"""The Python API (`import cifarlab as cl`): runs, own models, settings, best weights, callbacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cifarlab as cl
from cifarlab.cli import main
from cifarlab.networks import create_model

QUICK = {"epochs": 2, "batch_size": 32, "val_fraction": 0.2, "device": "cpu", "quiet": True}



@pytest.fixture(scope="module")
def base_run(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> cl.Run:
    out = tmp_path_factory.mktemp("api") / "base"
    return cl.train("base", data=toy_data, out=out, **{**QUICK, "epochs": 3})


class TinyNet(nn.Module):
    """A user's own network: any module from N x 3 x 32 x 32 to N x classes."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.slow
def test_run_object(base_run: cl.Run, toy_data: Path, tmp_path: Path) -> None:
    run = base_run
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    assert run.results["epochs"] == 3 and run.config.recipe == "base" and run.classes == list("abcd")
    assert isinstance(run.model, nn.Module) and not run.model.training
    assert repr(run).startswith("Run(")
    metrics = run.evaluate()
    assert metrics["split"] == "val" and metrics["images"] == 96 and 0 <= metrics["accuracy"] <= 1
    assert metrics["weights"] == "best" and metrics["epoch"] == run.results["best_weights_epoch"]
    # predict takes paths, folders, PIL images and arrays, and agrees with itself across them
    file = next((toy_data / "test" / "b").glob("*.png"))
    by_path = run.predict(file, top_k=2)
    with Image.open(file) as image:
        by_pil = run.predict(image, top_k=2)
    by_array = run.predict(np.asarray(Image.open(file)), top_k=2)
    assert by_path[0]["top"] == by_pil[0]["top"] == by_array[0]["top"]
    assert len(run.predict(toy_data / "test" / "a")) == 20
    with pytest.raises(cl.UserError, match="uint8 of shape"):
        run.predict(np.zeros((2, 16, 16, 3), np.uint8))
    for figure in (run.plot_curves(), run.plot_confusion(), run.plot_samples(),
                   run.plot_samples(mistakes=True), run.plot_calibration()):
        assert figure._repr_png_().startswith(b"\x89PNG")  # what Jupyter shows inline
    report = run.report(out=tmp_path / "report")
    assert report.path.name == "report.html" and "best weights" in report.path.read_text()
    assert Path(report) == report.path and report.diagnosis.verdict in repr(report)
    assert cl.load(str(run.path)).results == run.results  # str or Path


def test_settings_are_checked_like_the_command_line(toy_data: Path, tmp_path: Path) -> None:
    with pytest.raises(cl.UserError, match="unknown setting 'batchsize' \\(did you mean 'batch_size'"):
        cl.train("base", data=toy_data, batchsize=32)
    with pytest.raises(cl.UserError, match="setting 'epochs' expects int, got '3'"):
        cl.train("base", data=toy_data, epochs="3")
    with pytest.raises(cl.UserError, match="unknown setting 'augment.flop'"):
        cl.make_config("base", augment={"flop": True})
    assert cl.make_config("base", augment={"flip": True}).augment.flip
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_own_module_from_python(toy_data: Path, tmp_path: Path) -> None:
    net = TinyNet(num_classes=4)
    run = cl.train(model=net, data=toy_data, out=tmp_path / "own", lr=1e-2, **QUICK)
    assert run.config.model.endswith(":TinyNet")
    trained = net.conv.weight.detach().clone()
    assert run.evaluate(weights="final")["accuracy"] > 0.5
    assert torch.equal(net.conv.weight, trained)  # loading best.pt did not overwrite the module
    with pytest.raises(cl.UserError, match="not registered here; pass it again"):
        cl.load(run.path).evaluate()
    again = cl.load(run.path, model=TinyNet(num_classes=4))
    assert again.evaluate(weights="final") == run.evaluate(weights="final")
    with pytest.raises(cl.UserError, match="does not match the model"):
        cl.load(run.path, model=TinyNet(num_classes=4, width=5)).evaluate()
    factory = cl.train(model=TinyNet, data=toy_data, out=tmp_path / "factory", model_kwargs={"width": 4},
                       **QUICK)
    assert factory.load_model().body.conv.out_channels == 4  # type: ignore[union-attr]
    with pytest.raises(cl.UserError, match=r"must return logits of shape \(N, 4\)"):
        cl.train(model=nn.Flatten(), data=toy_data, out=tmp_path / "bad", **QUICK)
    assert not (tmp_path / "bad").exists()  # a failed start leaves no folder behind


@pytest.mark.slow
def test_own_model_file_through_every_command(toy_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "mynet.py"
    source.write_text("from torch import nn\n\n\nclass Net(nn.Module):\n"
                      "    def __init__(self, num_classes=10, width=8):\n        super().__init__()\n"
                      "        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),\n"
                      "                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
                      "                                  nn.Linear(width, num_classes))\n\n"
                      "    def forward(self, x):\n        return self.body(x)\n")
    spec, run = f"{source}:Net", tmp_path / "run"
    assert main(["train", "--data", str(toy_data), "--model", spec, "--set", "model_kwargs.width=6",
                 "--epochs", "2", "--batch-size", "32", "--val-fraction", "0.2", "--out", str(run),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 2
    assert "pass it again: --model" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--model", spec, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 96
    image = next((toy_data / "test" / "c").glob("*.png"))
    assert main(["predict", str(run), str(image), "--model", spec, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["label"] in "abcd"
    assert main(["export", str(run), "--model", spec, "--format", "torchscript"]) == 0
    assert (run / "export" / "model.torchscript.pt").is_file()
    assert main(["report", str(run), "--model", spec, "--quiet"]) == 0
    assert (run / "report" / "report.html").is_file()
    assert main(["summary", "--model", spec, "--set", "model_kwargs.width=6", "--classes", "4"]) == 0
    assert "total parameters: 196" in capsys.readouterr().out  # 3*6*9+6 + 6*4+4
    assert main(["train", "--resume", str(run), "--epochs", "3", "--model", spec, "--quiet"]) == 0
    assert main(["train", "--data", str(toy_data), "--model", f"{tmp_path}/nope.py:Net"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_set_config_file_and_print_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("recipe: robust\nlr: 0.002\nepochs: 4\naugment:\n  zoom: 0.2\n")
    assert main(["train", "--config", str(config), "--epochs", "6", "--set", "augment.flip=false",
                 "--set", "optimizer=sgd", "--print-config"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["recipe"] == "robust" and resolved["lr"] == 0.002  # file over recipe
    assert resolved["epochs"] == 6  # flag over file
    assert resolved["augment"] == {"flip": False, "rotation": 0.1, "zoom": 0.2, "translate": 0}
    assert resolved["optimizer"] == "sgd" and resolved["model"] == "base_dropout"
    for argv, message in [
        (["--set", "epochz=3"], "unknown setting 'epochz' (did you mean 'epochs'?)"),
        (["--set", "lr=fast"], "setting 'lr' expects float, got 'fast'"),
        (["--set", "augment.flip=maybe"], "setting 'augment.flip' expects bool"),
        (["--set", "lr"], "--set expects key=value"),
        (["--set", "monitor=val_auc"], "unknown monitor 'val_auc'"),
        (["--config", str(tmp_path / "missing.yaml")], "cannot read the config file"),
    ]:
        assert main(["train", *argv, "--print-config"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 3, "lrr": 1}')
    assert main(["train", "--config", str(bad), "--print-config"]) == 2
    assert "unknown setting 'lrr'" in capsys.readouterr().err


def test_a_runs_config_json_reruns_it_exactly(base_run: cl.Run, tmp_path: Path) -> None:
    rerun = tmp_path / "rerun"
    assert main(["train", "--config", str(base_run.path / "config.json"), "--out", str(rerun),
                 "--quiet"]) == 0
    again = cl.load(rerun)
    assert [r["val_loss"] for r in again.history] == [r["val_loss"] for r in base_run.history]


@pytest.mark.slow
def test_best_and_final_weights_and_early_stopping(toy_data: Path, tmp_path: Path) -> None:
    # a high lr for Adam: val accuracy need not rise every epoch, so best and final may differ
    run = cl.train("base", data=toy_data, out=tmp_path / "run", **{**QUICK, "epochs": 6},
                   lr=0.02, early_stop=2, seed=3)
    summary = run.results
    best = max(run.history, key=lambda r: r["val_acc"])
    assert summary["best_weights_epoch"] == best["epoch"] and summary["monitor"] == "val_acc"
    assert summary["final_epoch"] == len(run.history)
    if summary["stopped_early"]:
        assert len(run.history) - best["epoch"] == 2 and len(run.history) < 6
    else:
        assert len(run.history) == 6
    best_eval = run.evaluate(weights="best")
    assert best_eval["epoch"] == best["epoch"]
    assert best_eval["accuracy"] == pytest.approx(best["val_acc"], abs=1e-6)
    final_eval = run.evaluate(weights="final")
    assert final_eval["accuracy"] == pytest.approx(run.history[-1]["val_acc"], abs=1e-6)


def test_early_stop_stops_when_the_monitor_stalls(toy_data: Path, tmp_path: Path) -> None:
    # toy classes are separable: val accuracy reaches 1.0 at once and cannot improve after that
    run = cl.train("base", data=toy_data, out=tmp_path / "run", **{**QUICK, "epochs": 8},
                   early_stop=1)
    assert run.results["stopped_early"] and len(run.history) < 8
    assert (run.path / "model.pt").is_file() and (run.path / "best.pt").is_file()


def test_callbacks_see_every_epoch_and_can_stop(toy_data: Path, tmp_path: Path) -> None:
    calls: list[Any] = []

    class Recorder(cl.Callback):
        def on_train_begin(self, trainer: Any) -> None:
            calls.append(("begin", trainer.config.epochs))

        def on_step_end(self, trainer: Any, step: dict[str, float]) -> None:
            calls.append(("step", step["epoch"], step["step"]))

        def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
            calls.append(("epoch", metrics["epoch"], len(trainer.history)))

        def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
            calls.append(("end", summary["epochs"]))

    def stop_after_two(trainer: Any, metrics: dict[str, Any]) -> bool:
        return metrics["epoch"] >= 2

    run = cl.train("base", data=toy_data, out=tmp_path / "run", callbacks=[Recorder(), stop_after_two],
                   **{**QUICK, "epochs": 5})
    steps = [("step", e, s) for e in (1, 2) for s in range(1, run.results["steps_per_epoch"] + 1)]
    assert [c for c in calls if c[0] == "step"] == steps
    assert [c for c in calls if c[0] != "step"] == [("begin", 5), ("epoch", 1, 1), ("epoch", 2, 2),
                                                     ("end", 2)]
    assert len(run.history) == 2 and run.results["stopped_early"]
    with pytest.raises(cl.UserError, match="subclass cifarlab.Callback"):
        cl.train("base", data=toy_data, out=tmp_path / "bad", callbacks=[object()], **QUICK)


@pytest.mark.slow
def test_resume_extends_and_refuses_what_it_cannot_honour(base_run: cl.Run, toy_data: Path,
                                                          tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(base_run.path, copy)
    with pytest.raises(cl.UserError, match="already complete"):
        cl.resume(copy)
    with pytest.raises(cl.UserError, match="--lr cannot change"):
        cl.resume(copy, epochs=4, lr=0.1)
    with pytest.raises(cl.UserError, match="fewer"):
        cl.resume(copy, epochs=2)
    extended = cl.resume(copy, epochs=5, quiet=True)
    assert [r["epoch"] for r in extended.history] == [1, 2, 3, 4, 5]
    assert extended.history[:3] == base_run.history[:3]
    # a onecycle schedule is laid out for its length
    fast = cl.train("fast_small", data=toy_data, out=tmp_path / "fast",
                    **{**QUICK, "epochs": 1, "batch_size": 64}, tta=False)
    with pytest.raises(cl.UserError, match="cannot be extended"):
        cl.resume(fast.path, epochs=2)


def test_resume_checks_the_classes(base_run: cl.Run, toy_data: Path, tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "toy"
    shutil.copytree(toy_data, moved)
    (moved / "train" / "a").rename(moved / "train" / "zebra")
    (moved / "test" / "a").rename(moved / "test" / "zebra")
    copy = tmp_path / "copy"
    shutil.copytree(base_run.path, copy)
    with pytest.raises(cl.UserError, match="differ from the run's"):
        cl.resume(copy, epochs=4, data=moved)


@pytest.mark.slow
def test_tensorboard_logs_scalars_and_the_confusion_matrix(toy_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = cl.train("base", data=toy_data, out=tmp_path / "run", tensorboard=True, **QUICK)
    events = EventAccumulator(str(run.path / "tensorboard")).Reload()
    assert "lr" in events.Tags()["scalars"] and "confusion_matrix" in events.Tags()["images"]
    assert [e.step for e in events.Scalars("lr")] == [1, 2]


def test_summary_counts_parameters_and_flops() -> None:
    base = cl.summary("base")
    net = cl.summary(create_model("base", 10))
    assert base.total_params == net.total_params == 113_738
    # conv 3x3: 2 * H * W * Cin * Cout * 9 per layer; the three convs and the linear of `base`
    expected = 2 * (32 * 32 * 3 * 32 * 9 + 16 * 16 * 32 * 64 * 9 + 8 * 8 * 64 * 128 * 9 + 2048 * 10)
    assert base.flops == expected
    text = str(cl.summary("fast"))
    assert "body.whiten" in text and "frozen" in text
    assert cl.summary(TinyNet(num_classes=3)).layers[-1].output_shape == (3,)


def test_registry_decorator_makes_a_model_trainable(toy_data: Path, tmp_path: Path) -> None:
    from cifarlab.networks import MODELS

    @cl.register_model("tiny_test_net")
    def tiny(num_classes: int = 10) -> nn.Module:
        return TinyNet(num_classes, width=4)

    try:
        assert "tiny_test_net" in cl.models()
        run = cl.train("base", model="tiny_test_net", data=toy_data, out=tmp_path / "run", **QUICK)
        assert run.config.model == "tiny_test_net" and cl.load(run.path).evaluate()["images"] == 96
    finally:
        MODELS.pop("tiny_test_net")  # the registry is global: leave it as the other tests expect


@pytest.mark.slow
def test_explain_from_python_and_the_command_line(base_run: cl.Run, toy_data: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    figures = base_run.explain(count=4)
    assert set(figures) == {"filters", "feature_maps", "gradcam_correct", "gradcam_wrong"}
    assert all(f._repr_png_().startswith(b"\x89PNG") for f in figures.values())
    assert {p.name for p in (base_run.path / "explain").iterdir()} >= {"filters.png", "gradcam_wrong.png"}
    assert main(["explain", str(base_run.path), str(toy_data / "test" / "a"), "--layer", "body.3"]) == 0
    assert "gradcam.png" in capsys.readouterr().out
    assert main(["explain", str(base_run.path), "--layer", "body.99"]) == 2
    assert "its conv layers: body.0, body.3, body.6" in capsys.readouterr().err


def test_robustness_from_python_and_the_command_line(base_run: cl.Run,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    result = base_run.robustness(corruptions=["brightness", "gaussian_noise"], severities=[1, 5],
                                 images=40)
    assert result.n_images == 40 and set(result.table) == {"brightness", "gaussian_noise"}
    assert 0 <= result.mean_acc <= 1 and len(result.table["brightness"]) == 2
    assert (base_run.path / "robustness" / "robustness.json").is_file()
    comparison = cl.compare([base_run.path])
    assert comparison.rows[0]["robust_acc"] == pytest.approx(result.mean_acc, abs=1e-6)
    assert "corrupted acc" in comparison.format("markdown")
    assert main(["robustness", str(base_run.path), "--quick", "--corruptions", "fog",
                 "--severities", "2", "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["severities"] == [2] and list(saved["table"]) == ["fog"]
    assert main(["robustness", str(base_run.path), "--severities", "1,x"]) == 2
    assert "--severities takes numbers" in capsys.readouterr().err


def test_yaml_scientific_notation_is_a_number(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\nweight_decay: 5e-4\nrecipe: base\n")  # YAML 1.1: strings
    resolved = cl.make_config(config_file=config)
    assert resolved.lr == 0.001 and resolved.weight_decay == 0.0005
    config.write_text("lr: fast\n")
    with pytest.raises(cl.UserError, match="setting 'lr' expects float, got 'fast'"):
        cl.make_config(config_file=config)
