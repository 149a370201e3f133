"""The classifier path end to end: POST /tasks trains on real MiniLM embeddings, then predict.

Runs the router in a FastAPI app with the project's error handlers, through fastapi's TestClient
and through a real uvicorn server with `fewshot.Client`.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fewshot import Client
from fewshot.api.errors import install_error_handlers
from fewshot.api.routes_tasks import open_service, router
from fewshot.toolkit.classifier import Embedder
from fewshot.toolkit.client import FewShotAPIError

TRAIN = [
    ("I loved this film, wonderful acting", "positive"),
    ("What a great meal, delicious and fresh", "positive"),
    ("Fantastic service, I am very happy", "positive"),
    ("Brilliant book, I enjoyed every page", "positive"),
    ("Terrible film, a boring waste of time", "negative"),
    ("The food was cold and disgusting", "negative"),
    ("Awful service, rude and slow staff", "negative"),
    ("A dreadful book, I hated it", "negative"),
]


@pytest.fixture
def app(tmp_path, embedder: Embedder) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.tasks_dir = tmp_path / "tasks"
    app.state.task_embedder = embedder
    open_service(app)
    return app


def test_train_predict_list_delete(app: FastAPI) -> None:
    http = TestClient(app)
    examples = [{"text": t, "label": y} for t, y in TRAIN]
    r = http.post("/tasks", json={"name": "reviews", "examples": examples})
    assert r.status_code == 201, r.text
    stats = r.json()
    assert stats["labels"] == ["negative", "positive"]
    assert stats["n_examples"] == 8 and stats["train_accuracy"] == 1.0
    assert stats["cv_accuracy"] is not None and stats["embed_ms"] > 0

    r = http.post(
        "/tasks/reviews/predict",
        json={"inputs": ["An excellent, delightful movie", "Horrible and disappointing food"]},
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert abs(sum(preds[0]["probabilities"].values()) - 1) < 1e-6
    assert preds[0]["score"] == max(preds[0]["probabilities"].values())

    single = http.post("/tasks/reviews/predict", json={"inputs": "So good!"}).json()["predictions"]
    assert len(single) == 1

    assert [t["name"] for t in http.get("/tasks").json()["tasks"]] == ["reviews"]
    assert http.get("/tasks/reviews").json()["label_counts"] == {"negative": 4, "positive": 4}

    dup = http.post("/tasks", json={"name": "reviews", "examples": examples})
    assert dup.status_code == 409 and "overwrite" in dup.json()["error"]
    assert (
        http.post(
            "/tasks", json={"name": "reviews", "examples": examples[:2], "overwrite": True}
        ).status_code
        == 201
    )

    assert http.delete("/tasks/reviews").json() == {"deleted": "reviews"}
    missing = http.post("/tasks/reviews/predict", json={"inputs": "x"})
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"


def test_validation_errors(app: FastAPI) -> None:
    http = TestClient(app)
    bad_name = http.post("/tasks", json={"name": "../x", "examples": [{"text": "a", "label": "b"}]})
    assert bad_name.status_code == 422 and "error" in bad_name.json()
    empty = http.post("/tasks", json={"name": "t", "examples": []})
    assert empty.status_code == 422
    assert http.get("/tasks/bad%20name").status_code == 422


def test_served_by_uvicorn_through_the_client(app: FastAPI, serve_app: Any) -> None:
    with serve_app(app) as url, Client(url) as client:
        stats = client.create_task("sentiment", TRAIN)
        assert stats["name"] == "sentiment"
        preds = client.predict_task(
            "sentiment", ["Lovely and charming", "Nasty, broken and useless"]
        )
        assert [p["label"] for p in preds] == ["positive", "negative"]
        assert [t["name"] for t in client.list_tasks()] == ["sentiment"]
        with pytest.raises(FewShotAPIError) as err:
            client.predict_task("unknown", "x")
        assert err.value.status == 404 and "does not exist" in err.value.message


def test_presets_route(app: FastAPI) -> None:
    presets = TestClient(app).get("/presets").json()["presets"]
    assert "translation_en_fr" in {p["name"] for p in presets}
