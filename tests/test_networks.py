"""networks.py: the model registry, the classic Keras CNNs and FastNet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cifarlab.errors import UserError
from cifarlab.networks import create_model, list_models


@pytest.mark.parametrize("name", ["base", "base_dropout", "bn"])
def test_models_map_pixels_to_logits(name: str) -> None:
    model = create_model(name, 10).eval()
    out = model(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (5, 10) and torch.isfinite(out).all()


def test_base_matches_the_keras_tutorials_architecture() -> None:
    model = create_model("base", 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    params = sum(p.numel() for p in model.parameters())
    # 3x3 convs 3->32->64->128 plus Linear(2048 -> 10), as in the Keras notebook
    assert params == (27 * 32 + 32) + (288 * 64 + 64) + (576 * 128 + 128) + (2048 * 10 + 10)


@pytest.mark.parametrize("name", ["base", "base_dropout", "bn"])
def test_pool_before_relu_is_the_keras_tutorials_order(name: str) -> None:
    """The Keras tutorial's models run MaxPool before ReLU (cheaper); outputs and gradients must equal the
    Keras order, ReLU then MaxPool, with the same weights."""
    torch.manual_seed(0)
    model = create_model(name, 10).body.train()
    layers = list(model)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], torch.nn.MaxPool2d) and isinstance(layers[i + 1], torch.nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    keras_order = torch.nn.Sequential(*layers)
    assert [type(m) for m in keras_order] != [type(m) for m in model]
    x = torch.randn(8, 3, 32, 32)
    outputs, grads = [], []
    for net in (model, keras_order):
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        out = net(x)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_normalisation_is_inside_the_model() -> None:
    model = create_model("base", 10, mean=(100.0, 100.0, 100.0), std=(50.0, 50.0, 50.0)).eval()
    x = torch.full((1, 3, 32, 32), 100.0)
    body_out = model.body(torch.zeros(1, 3, 32, 32))
    assert torch.allclose(model(x), body_out)


def test_registry() -> None:
    assert {"base", "base_dropout", "bn"} <= set(list_models())
    with pytest.raises(UserError, match="unknown model 'nope'"):
        create_model("nope", 10)


@pytest.mark.parametrize("name", ["fastnet", "fastnet_small"])
def test_fastnet_whitening_decorrelates_patches(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10)
    base = torch.rand(256, 3, 32, 32)
    images = base + 0.8 * base.roll(1, dims=1)  # strongly correlated channels
    model.body.init_from_data(images)
    out = model.body.whiten(images)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(out.T.double())
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=0.05)
    assert out.mean(0).abs().max() < 1e-3
    assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("argv, message", [
    (["--classes", "-1"], "--classes must be in 1..100,000"),
    (["--classes", "0"], "--classes must be in 1..100,000"),  # silently meant 10 before
    (["--classes", "1000000000"], "--classes must be in 1..100,000"),
    (["--set", "model_kwargs.width=1000000000"], "can't allocate memory"),
    (["--set", "model_kwargs.width=-5"], "negative dimension"),
])
def test_absurd_model_sizes_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22, item 17: allocator tracebacks (with bounded memory) before, or a silent 10."""
    from cifarlab.cli import main

    source = tmp_path / "wide.py"
    source.write_text("from torch import nn\n\n\nclass Wide(nn.Sequential):\n"
                      "    def __init__(self, num_classes=10, width=8):\n"
                      "        super().__init__(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1),\n"
                      "                         nn.Flatten(), nn.Linear(width, num_classes))\n")
    target = ["--model", f"{source}:Wide"] if "model_kwargs.width" in " ".join(argv) else ["base"]
    assert main(["summary", *target, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
def test_fastnet_takes_widths_activation_and_bn_momentum() -> None:
    model = create_model("fastnet", 10, kwargs={"widths": [64, 128, 128], "act": "silu",
                                                 "bn_momentum": 0.1})
    body = model.body
    assert [g.conv2.out_channels for g in body.groups] == [64, 128, 128]
    assert isinstance(body.groups[0].act, torch.nn.SiLU)
    assert {m.momentum for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    for bad in [{"widths": [64, 128]}, {"act": "swish"}, {"bn_momentum": 0}]:
        with pytest.raises(UserError, match="model_kwargs"):
            create_model("fastnet_small", 10, kwargs=bad)
