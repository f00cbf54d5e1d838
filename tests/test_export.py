"""Export: the ONNX and TorchScript files give the PyTorch model's answers on real images, any batch.

Also holds the run shared by the serving tests (`tiny_run`): `base` trained for one epoch on 500
real CIFAR-10 images, built once per session.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab import export
from cifarlab.checkpoint import load_model
from cifarlab.cli import main
from cifarlab.errors import UserError
from cifarlab.evaluate import predict_logits
from cifarlab.sources import decode_image
from conftest import CIFAR100_FINE, CLASSES, cifar100_run, held_out_files, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(run: Path) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Held-out images (N, 3, 32, 32 uint8) and the PyTorch model's probabilities and logits."""
    model, _ = load_model(run)
    images = np.stack([decode_image(f.read_bytes(), f.name)[0] for f in held_out_files(run)])
    logits = predict_logits(model, images, torch.device("cpu"))
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), logits.softmax(1), logits


@pytest.fixture(scope="module")
def onnx_file(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("onnxruntime", "onnxscript"):
        pytest.importorskip(module)
    out, _ = export.export_model(run, "onnx", tmp_path_factory.mktemp("onnx") / "model.onnx")
    return out


def test_onnx_matches_pytorch_on_real_images(onnx_file: Path, reference: tuple) -> None:
    import onnxruntime as ort

    images, probs, logits = reference
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got_probs, got_logits = session.run(["probs", "logits"], {"images": images})
    diff = float(np.abs(got_probs - probs.numpy()).max())
    print(f"ONNX vs PyTorch on {len(images)} held-out images: max |probs diff| {diff:.2e}, "
          f"max |logits diff| {float(np.abs(got_logits - logits.numpy()).max()):.2e}")
    assert diff < 1e-4
    assert (got_probs.argmax(1) == probs.numpy().argmax(1)).all()
    np.testing.assert_allclose(got_logits, logits.numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_batch_size_is_dynamic(onnx_file: Path, reference: tuple) -> None:
    import onnxruntime as ort

    images, probs, _ = reference
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for n in (1, 3, len(images)):
        got, = session.run(["probs"], {"images": images[:n]})
        assert got.shape == (n, len(CLASSES))
        np.testing.assert_allclose(got, probs[:n].numpy(), atol=1e-4)


def test_onnx_takes_uint8_and_carries_class_names(onnx_file: Path, run: Path, reference: tuple) -> None:
    import onnxruntime as ort

    images = reference[0]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    with pytest.raises(Exception, match="(?i)type"):  # 0..1 floats are refused, not misread
        session.run(None, {"images": images.astype(np.float32) / 255})
    _, record = load_model(run)
    embedded = json.loads(session.get_modelmeta().custom_metadata_map["cifarlab"])
    sidecar = json.loads(export.sidecar_path(onnx_file).read_text())
    assert embedded["classes"] == sidecar["classes"] == record["classes"]
    assert sidecar["input"]["dtype"] == "uint8"
    assert [o["name"] for o in sidecar["outputs"]] == ["probs", "logits"]
    assert sidecar["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_matches_pytorch_for_uint8_and_float(run: Path, reference: tuple, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    images, probs, logits = reference
    out = tmp_path / "ts.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert str(out) in said and "from the best weights (epoch " in said and "best.pt)" in said
    extra = {"cifarlab.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    sidecar = json.loads(export.sidecar_path(out).read_text())
    assert json.loads(extra["cifarlab.json"])["classes"] == sidecar["classes"]
    assert sidecar["input"]["dtype"] == "uint8 or float32"
    batch = torch.from_numpy(images)
    with torch.no_grad():
        for x in (batch, batch.float(), batch[:1], batch[:5].float()):
            got_probs, got_logits = loaded(x)
            torch.testing.assert_close(got_probs, probs[:len(x)], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_logits, logits[:len(x)], atol=1e-4, rtol=1e-4)


def test_default_output_is_inside_the_run(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "model.pt").write_bytes((run / "model.pt").read_bytes())
    out, sidecar = export.export_model(copy / "model.pt", "torchscript")
    assert out == copy / "export" / "model.torchscript.pt" and sidecar.name == "model.torchscript.pt.json"


def test_out_never_replaces_files_cifarlab_did_not_write(run: Path, tmp_path: Path) -> None:
    """Issue 12: export --out replaced whatever file had the name."""
    out = tmp_path / "ship" / "cat-dog.pt"
    out.parent.mkdir()
    out.with_name("cat-dog.pt.json").write_text("{}")  # the user's own file, named like a sidecar
    with pytest.raises(UserError, match=r"cat-dog\.pt\.json exists and was not written by cifarlab"):
        export.export_model(run, "torchscript", out)
    assert not out.exists() and out.with_name("cat-dog.pt.json").read_text() == "{}"
    out.with_name("cat-dog.pt.json").unlink()
    for _ in range(2):  # its own files are replaced
        assert export.export_model(run, "torchscript", out)[0] == out
    assert export.export_model(run, "torchscript", out.parent)[0] == out.parent / "model.torchscript.pt"


def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "model not found" in err and len(err.strip().splitlines()) == 1


def test_missing_onnx_packages_say_what_to_install(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "onnxscript" else real(name))
    with pytest.raises(UserError, match="pip install onnx onnxscript"):
        export.export_model(run, "onnx")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_100_class_model_exports_with_its_class_names(tmp_path_factory: pytest.TempPathFactory,
                                                       tmp_path: Path) -> None:
    run = cifar100_run(tmp_path_factory)
    model, record = load_model(run)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = predict_logits(model, images, torch.device("cpu")).softmax(1)
    out, _ = export.export_model(run, "torchscript", tmp_path / "model.torchscript.pt")
    probs, _ = torch.jit.load(str(out))(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    assert probs.shape == (3, 100)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
    sidecar = json.loads(export.sidecar_path(out).read_text())
    assert sidecar["classes"] == record["classes"] == CIFAR100_FINE
    assert [o["shape"] for o in sidecar["outputs"]] == [["batch", 100], ["batch", 100]]
