"""Robustness measurement: the table's shape, clean accuracy as evaluate computes it, the files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from cifarlab import robustness
from cifarlab.corruptions import CORRUPTIONS
from cifarlab.data import Split
from cifarlab.errors import UserError
from cifarlab.evaluate import evaluate_split
from cifarlab.networks import create_model
from cifarlab.robustness import PRESETS, Robustness, comparison_figure, load, markdown_table, measure
from conftest import class_images

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(16) % 10
    return class_images(labels, seed=3), labels


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("base", 10, (128.0,) * 3, (64.0,) * 3).eval()


@pytest.fixture(scope="module")
def full(model: torch.nn.Module, data: tuple[np.ndarray, np.ndarray]) -> Robustness:
    return measure(model, *data, CPU, quiet=True)


def test_table_has_every_corruption_and_severity(full: Robustness) -> None:
    assert list(full.table) == list(CORRUPTIONS)
    assert full.severities == (1, 2, 3, 4, 5) and full.n_images == 16
    assert all(len(row) == 5 and all(0 <= acc <= 1 for acc in row) for row in full.table.values())
    cells = [acc for row in full.table.values() for acc in row]
    assert full.mean_acc == pytest.approx(sum(cells) / 75)
    assert full.relative_drop == pytest.approx((full.clean_acc - full.mean_acc) / full.clean_acc)
    assert set(full.group_means) == {"noise", "blur", "weather", "digital"}
    assert full.group_means["noise"] == pytest.approx(
        np.mean([full.table[n] for n in ("gaussian_noise", "shot_noise", "impulse_noise")]))


def test_clean_accuracy_is_evaluates(model: torch.nn.Module, full: Robustness,
                                     data: tuple[np.ndarray, np.ndarray]) -> None:
    assert full.clean_acc == pytest.approx(evaluate_split(model, Split(*data), CPU)["accuracy"])


def test_severity_zero_scores_the_clean_accuracy(model: torch.nn.Module,
                                                 data: tuple[np.ndarray, np.ndarray]) -> None:
    result = measure(model, *data, CPU, corruptions=["fog", "glass_blur"], severities=(0, 3), quiet=True)
    assert result.table["fog"][0] == result.clean_acc == result.table["glass_blur"][0]


def test_same_seed_same_table(model: torch.nn.Module, data: tuple[np.ndarray, np.ndarray]) -> None:
    runs = [measure(model, *data, CPU, corruptions=["gaussian_noise", "frost"], severities=(5,),
                    seed=4, quiet=True) for _ in range(2)]
    assert runs[0].table == runs[1].table


def test_a_colour_reading_model_fails_as_brightness_rises(data: tuple[np.ndarray, np.ndarray]) -> None:
    """The table moves the right way: a model that knows each class by its mean colour (as the toy
    images are made) is perfect on clean images and fails ever more as brightness shifts colours."""
    images, labels = data
    colours = torch.stack([torch.as_tensor(images[labels == c], dtype=torch.float32).mean((0, 1, 2))
                           for c in range(10)])

    class NearestColour(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -torch.cdist(x.float().mean((2, 3)), colours)

    result = measure(NearestColour(), images, labels, CPU, corruptions=["brightness"], quiet=True)
    assert result.clean_acc == 1.0
    row = result.table["brightness"]
    assert row == sorted(row, reverse=True) and row[-1] < 0.8


def test_write_and_load_round_trip(full: Robustness, tmp_path: Path) -> None:
    paths = full.write(tmp_path / "robustness")
    assert [p.name for p in paths] == ["robustness.csv", "robustness.json", "robustness.png"]
    assert sorted(p.name for p in (tmp_path / "robustness").iterdir()) == sorted(p.name for p in paths)
    back = load(tmp_path / "robustness")
    assert back is not None
    assert back.table == full.table and back.clean_acc == full.clean_acc
    assert back.severities == full.severities and back.n_images == full.n_images
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(io.StringIO(paths[0].read_text())))
    assert [r["corruption"] for r in rows] == ["clean", *CORRUPTIONS, "mean"]
    assert float(rows[-1]["mean"]) == pytest.approx(full.mean_acc, abs=1e-4)
    assert json.loads(paths[1].read_text())["mean_acc"] == pytest.approx(full.mean_acc)


def test_load_of_a_folder_without_it_is_none_and_of_a_bad_file_an_error(tmp_path: Path) -> None:
    assert load(tmp_path) is None
    (tmp_path / "robustness.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="cannot read .*robustness.json"):
        load(tmp_path)


def test_bad_arguments_are_user_errors(model: torch.nn.Module, data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data
    with pytest.raises(UserError, match="unknown corruption 'blur'"):
        measure(model, images, labels, CPU, corruptions=["blur"], quiet=True)
    with pytest.raises(UserError, match="severity must be one of"):
        measure(model, images, labels, CPU, severities=(1, 7), quiet=True)
    with pytest.raises(UserError, match="as many labels as images"):
        measure(model, images, labels[:3], CPU, quiet=True)


def test_quick_preset_and_take(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data
    assert PRESETS["quick"].severities == (1, 3, 5) and PRESETS["full"].images is None
    some, their = robustness.take(images, labels, 5, seed=1)
    again, _ = robustness.take(images, labels, 5, seed=1)
    assert len(some) == 5 and np.array_equal(some, again)
    for image, label in zip(some, their, strict=True):  # images keep their labels
        assert any(np.array_equal(image, i) and label == lab for i, lab in zip(images, labels, strict=True))
    assert robustness.take(images, labels, None)[0] is images


def test_figures_and_markdown(full: Robustness) -> None:
    assert isinstance(full.heatmap(), Figure)
    other = Robustness(clean_acc=0.5, table={"fog": [0.4, 0.3]}, severities=(1, 5), n_images=10)
    assert isinstance(comparison_figure([("a", full), ("b", other)]), Figure)
    table = markdown_table([("a", full), ("b", other)])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| run | clean | mean corrupted | relative drop | noise")
    assert lines[3].startswith("| b | 50.0% | 35.0% | 30.0% |")
    assert other.group_means == {"weather": pytest.approx(0.35)}


def test_measure_many_equals_one_by_one(model: torch.nn.Module, data: tuple[np.ndarray, np.ndarray]) -> None:
    torch.manual_seed(1)
    other = create_model("base_dropout", 10, (128.0,) * 3, (64.0,) * 3).eval()
    kwargs = {"corruptions": ["shot_noise", "pixelate"], "severities": (2, 4), "seed": 3, "quiet": True}
    both = robustness.measure_many({"a": model, "b": other}, *data, CPU, **kwargs)  # type: ignore[arg-type]
    for key, one in (("a", model), ("b", other)):
        alone = measure(one, *data, CPU, **kwargs)  # type: ignore[arg-type]
        assert both[key].table == alone.table and both[key].clean_acc == alone.clean_acc
