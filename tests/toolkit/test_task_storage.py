"""Task storage under concurrency and crashes: exclusive creation (one 201, the rest 409),
atomic durable writes that survive kill -9 mid-write, corrupt files reported as a typed 500,
and names checked as a whole (no trailing newline)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fewshot.api.errors import install_error_handlers
from fewshot.api.routes_tasks import open_service, router
from fewshot.toolkit.classifier import TaskError, TaskStore, check_name

EXAMPLES = [
    {"text": "good", "label": "pos"},
    {"text": "great", "label": "pos"},
    {"text": "bad", "label": "neg"},
    {"text": "awful", "label": "neg"},
]


class HashEmbedder:
    """A deterministic stand-in for MiniLM: 16-dim vectors from a hash of the text."""

    name = "hash-embedder"

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], np.uint8) for t in texts]
        vectors = np.asarray(rows, dtype=np.float32) - 128
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.tasks_dir = tmp_path / "tasks"
    app.state.task_embedder = HashEmbedder()
    open_service(app)
    return app


def test_concurrent_creates_of_one_name_are_exclusive(app: FastAPI) -> None:
    http = TestClient(app)
    n = 10
    barrier = threading.Barrier(n)
    statuses: list[int] = []

    def create(i: int) -> None:
        barrier.wait()
        body = {"name": "race", "examples": EXAMPLES, "c": 1.0 + i, "cross_validate": False}
        statuses.append(http.post("/tasks", json=body).status_code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [201] + [409] * (n - 1)
    winner = http.get("/tasks/race").json()
    assert winner["n_examples"] == 4
    assert [p.name for p in (app.state.tasks_dir).iterdir()] == ["race.json"]  # no temp files


def test_overwrite_replaces(app: FastAPI) -> None:
    http = TestClient(app)
    body = {"name": "t", "examples": EXAMPLES, "cross_validate": False}
    assert http.post("/tasks", json=body).status_code == 201
    assert http.post("/tasks", json=body).status_code == 409
    assert http.post("/tasks", json={**body, "c": 2.0, "overwrite": True}).status_code == 201
    assert http.get("/tasks/t").json()["c"] == 2.0


@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", '{"labels": ["a"]}', '{"labels": 5, "coef": 1}', ""]
)
def test_corrupt_task_file_is_a_typed_error(app: FastAPI, content: str) -> None:
    http = TestClient(app)
    ok = {"name": "fine", "examples": EXAMPLES, "cross_validate": False}
    assert http.post("/tasks", json=ok).status_code == 201
    (app.state.tasks_dir / "broken.json").write_text(content)
    for response in (
        http.get("/tasks/broken"),
        http.post("/tasks/broken/predict", json={"inputs": "x"}),
    ):
        assert response.status_code == 500, response.text
        body = response.json()
        assert body["error_type"] == "storage" and "broken" in body["error"]
    assert [t["name"] for t in http.get("/tasks").json()["tasks"]] == ["fine"]


@pytest.mark.parametrize("name", ["a\n", "a\nb", "\na", ".a", "a" * 65, "a b", "a/b", "é"])
def test_names_are_checked_whole(name: str) -> None:
    with pytest.raises(TaskError):
        check_name(name)
    assert check_name("a.b-c_D9") == "a.b-c_D9"


WRITER = textwrap.dedent(
    """
    import sys
    from fewshot.toolkit.classifier import TaskClassifier, TaskStore
    store = TaskStore(sys.argv[1])
    for i in range(100_000):
        width = 20_000 if i % 2 else 10
        clf = TaskClassifier(["a", "b"], [[float(i)] * width], [float(i)], {"name": "t", "i": i})
        store.save(clf)
        print(i, flush=True)
    """
)


def test_kill_during_task_writes_leaves_a_readable_task(tmp_path: Path) -> None:
    """kill -9 a process that rewrites one task in a loop: the task always reads back whole
    (one of the written versions), and stray temp files are not listed as tasks."""
    root = tmp_path / "tasks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    for _ in range(20):  # let it complete some writes, then kill it mid-loop
        proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = TaskStore(root)
    clf = store.load("t")
    i = clf.meta["i"]
    assert clf.intercept == [float(i)] and set(clf.coef[0]) == {float(i)}
    assert [t["name"] for t in store.list()] == ["t"]
    json.loads((root / "t.json").read_text())
