"""The embedding classifier: probabilities equal scikit-learn's, JSON persistence, the store."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fewshot.toolkit.classifier import (
    TaskClassifier,
    TaskError,
    TaskStore,
    check_name,
    cross_val_accuracy,
)


def _data(n_classes: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, 8)) * 3
    labels = [f"c{i % n_classes}" for i in range(12 * n_classes)]
    x = np.stack([centers[int(lab[1:])] + rng.normal(size=8) for lab in labels])
    return x.astype(np.float32), labels


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_probabilities_equal_sklearn(n_classes: int) -> None:
    x, y = _data(n_classes)
    clf = TaskClassifier.fit(x, y, c=10.0)
    ref = LogisticRegression(C=10.0, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(clf.probabilities(x), ref.predict_proba(x), rtol=1e-4, atol=1e-6)
    assert [p.label for p in clf.predict_vectors(x)] == list(ref.predict(x))


def test_single_label_predicts_it() -> None:
    x, _ = _data(2)
    clf = TaskClassifier.fit(x[:3], ["only"] * 3)
    preds = clf.predict_vectors(x)
    assert {p.label for p in preds} == {"only"} and preds[0].score == 1.0


def test_store_round_trip_is_json(tmp_path) -> None:
    x, y = _data(3)
    clf = TaskClassifier.fit(x, y)
    clf.meta = {"name": "demo", "n_examples": len(y)}
    store = TaskStore(tmp_path / "tasks")
    path = store.save(clf)
    assert path.name == "demo.json" and path.read_text().startswith("{")
    again = store.load("demo")
    np.testing.assert_allclose(again.probabilities(x), clf.probabilities(x))
    assert store.list()[0]["labels"] == ["c0", "c1", "c2"]
    assert store.delete("demo") and not store.delete("demo")
    with pytest.raises(TaskError):
        store.load("demo")


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "x" * 65])
def test_task_names_are_checked(name: str) -> None:
    with pytest.raises(TaskError):
        check_name(name)


def test_cross_validation() -> None:
    x, y = _data(2)
    assert cross_val_accuracy(x, y) > 0.9
    assert cross_val_accuracy(x[:3], ["a", "a", "b"]) is None
