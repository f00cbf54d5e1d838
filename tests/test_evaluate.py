"""evaluate.py: predictions (TTA on all or the least-confident images) and the scores made from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarlab.evaluate import class_scores, confusion_counts, most_confused, predict_logits, tta_views
from cifarlab.networks import create_model


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


def test_tta_averages_six_views() -> None:
    from cifarlab.evaluate import predict_logits

    torch.manual_seed(0)
    model = create_model("base", 10).eval()
    cpu = torch.device("cpu")
    flat = torch.full((2, 32, 32, 3), 77, dtype=torch.uint8)  # every view of it is the same
    assert torch.allclose(predict_logits(model, flat, cpu, tta=True), predict_logits(model, flat, cpu),
                          atol=1e-5)
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    x = images.permute(0, 3, 1, 2).float()
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
    with torch.no_grad():
        pairs = [0.5 * (model(v) + model(v.flip(3))) for v in views]
    expected = 0.5 * pairs[0] + 0.25 * pairs[1] + 0.25 * pairs[2]
    assert torch.allclose(predict_logits(model, images, cpu, tta=True), expected, atol=1e-5)


def test_confusion_scores_and_pairs() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    counts = confusion_counts(labels, preds, 3)
    assert counts.tolist() == [[3, 1, 0], [1, 1, 0], [0, 2, 0]]
    scores = class_scores(counts, ["a", "b", "c"])
    assert scores["a"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert scores["b"]["precision"] == pytest.approx(0.25) and scores["b"]["recall"] == pytest.approx(0.5)
    assert scores["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}  # never predicted
    pairs = most_confused(counts, ["a", "b", "c"], top=5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("c", "b", 2), ("b", "a", 1), ("a", "b", 1)]
    assert pairs[0]["share_of_true"] == 1.0


def test_class_scores_match_scikit_learn() -> None:
    """An oracle: per-class precision, recall, F1 and support as scikit-learn computes them
    (zero_division=0, cifarlab's rule for a class never predicted or never present)."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 6, 500))
    preds[preds == 6] = 5  # class 6: present, never predicted
    classes = [f"c{i}" for i in range(7)]
    ours = class_scores(confusion_counts(labels, preds, 7), classes)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, preds, labels=list(range(7)), zero_division=0)
    for i, name in enumerate(classes):
        assert ours[name] == pytest.approx({"precision": precision[i], "recall": recall[i],
                                            "f1": f1[i], "support": support[i]})
    assert ours["c6"]["precision"] == 0.0


@pytest.mark.parametrize("fraction", [0.25, 1.0])
def test_tta_costs_the_views_it_says(fraction: float) -> None:
    """The budget counts tta_views(...) forward passes an image: the unsure share reuses its
    plain view."""
    torch.manual_seed(0)
    model = create_model("fastnet_small", 10)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    images = torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8).numpy()
    predict_logits(model, images, torch.device("cpu"), tta=True, tta_fraction=fraction)
    assert sum(seen) == 40 * tta_views(fraction) == {0.25: 90, 1.0: 240}[fraction]
