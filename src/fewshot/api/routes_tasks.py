"""Few-shot task classifiers over HTTP: train from labelled examples, predict, list, delete.

    POST   /tasks                  {"name", "examples": [{"text", "label"}], "overwrite"?, "c"?}
    GET    /tasks                  {"tasks": [summary, ...]}
    GET    /tasks/{name}           summary (labels, counts, accuracies, timings)
    POST   /tasks/{name}/predict   {"inputs": str | [str]} -> {"task", "predictions": [...]}
    DELETE /tasks/{name}
    GET    /presets                {"presets": [...]}: the shipped few-shot prompts (playground)

Tasks are stored as JSON under `app.state.tasks_dir` if set, else `<settings.cache_dir>/tasks`.
The app's lifespan creates the `TaskService` (`open_service`) and holds it in the app state
beside the models; the embedding model loads on the first request that needs it (not at
import), once per app. Creation is exclusive: of concurrent creates of one name without
`overwrite`, one gets 201 and the others 409. An unreadable task file is a 500 of type
`storage` naming the task. Errors are `ApiError`s, rendered by the app's handlers in the TGI
format ({"error", "error_type"}).
Endpoints are plain functions, so FastAPI runs the CPU-bound embedding in its thread pool.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import Field

from fewshot.api.errors import ApiError, ShuttingDown, ValidationFailed
from fewshot.api.wire import RequestModel
from fewshot.toolkit.classifier import (
    Embedder,
    TaskClassifier,
    TaskCorruptError,
    TaskError,
    TaskExistsError,
    TaskStore,
    check_name,
    predict,
    summary,
    train_task,
)
from fewshot.toolkit.presets import list_presets

router = APIRouter(tags=["tasks"])

MAX_EXAMPLES = 10_000
MAX_INPUTS = 256


class TaskNotFound(ApiError):
    status = 404
    error_type = "not_found"


class TaskExists(ApiError):
    status = 409
    error_type = "conflict"


class TaskUnreadable(ApiError):
    """The task file exists but cannot be read back (corrupt, or not a task)."""

    status = 500
    error_type = "storage"


class LabelledExample(RequestModel):
    text: str = Field(min_length=1, max_length=20_000)
    label: str = Field(min_length=1, max_length=200)


class CreateTaskRequest(RequestModel):
    name: str = Field(description="1-64 characters: letters, digits, '_', '-', '.'")
    examples: list[LabelledExample] = Field(min_length=1, max_length=MAX_EXAMPLES)
    overwrite: bool = False
    c: float = Field(
        10.0, gt=0, description="Inverse regularisation strength of LogisticRegression"
    )
    cross_validate: bool = True


class PredictRequest(RequestModel):
    inputs: str | list[str]


class TaskService:
    """The store, the shared embedder and a cache of loaded classifiers (checked by mtime)."""

    def __init__(self, root: Path, embedder: Embedder | None = None) -> None:
        self.store = TaskStore(root)
        self.embedder = embedder or Embedder()
        self._cache: dict[str, tuple[tuple[int, int], TaskClassifier]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> TaskClassifier:
        path = self.store.path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise TaskNotFound(f"Task {name} does not exist") from None
        version = (st.st_ino, st.st_mtime_ns)  # a rename or a rewrite changes it
        with self._lock:
            hit = self._cache.get(name)
            if hit and hit[0] == version:
                return hit[1]
        try:
            clf = self.store.load(name)
        except TaskCorruptError as exc:
            raise TaskUnreadable(f"Task {name} cannot be read: {exc}") from None
        except TaskError:  # deleted in between
            raise TaskNotFound(f"Task {name} does not exist") from None
        with self._lock:
            self._cache[name] = (version, clf)
        return clf


def open_service(app: FastAPI) -> TaskService:
    """Create the app's TaskService (from its lifespan) and hold it in the app state."""
    state = app.state
    svc = TaskService(tasks_dir(state), getattr(state, "task_embedder", None))
    state.fewshot_tasks = svc
    return svc


def service(request: Request) -> TaskService:
    """The app's TaskService (made by `open_service`)."""
    app_state = getattr(request.app.state, "fewshot", None)
    if app_state is not None and app_state.draining:
        raise ShuttingDown()
    svc = getattr(request.app.state, "fewshot_tasks", None)
    if svc is None:
        raise ApiError("the /tasks service is not running", status=503)
    return svc


def tasks_dir(state: Any) -> Path:
    explicit = getattr(state, "tasks_dir", None)
    if explicit:
        return Path(explicit)
    settings = getattr(state, "settings", None)
    if settings is None:
        settings = getattr(getattr(state, "fewshot", None), "settings", None)
    if settings is None:
        raise ApiError("the server has no settings to locate its tasks directory", status=500)
    return Path(settings.cache_dir) / "tasks"


def _name(name: str) -> str:
    try:
        return check_name(name)
    except TaskError as exc:
        raise ValidationFailed.one("name", str(exc)) from None


@router.post("/tasks", status_code=201)
def create_task(body: CreateTaskRequest, request: Request) -> dict[str, Any]:
    """Embed the examples, fit the classifier, persist it and return its stats."""
    svc = service(request)
    name = _name(body.name)
    exists = TaskExists(f"Task {name} exists; send overwrite=true to replace it")
    if svc.store.exists(name) and not body.overwrite:
        raise exists  # early, before the embedding work; the save below decides races
    texts = [e.text for e in body.examples]
    labels = [e.label.strip() for e in body.examples]
    try:
        clf = train_task(
            name, texts, labels, svc.embedder, c=body.c, cross_validate=body.cross_validate
        )
    except TaskError as exc:
        raise ValidationFailed.one("examples", str(exc)) from None
    try:
        svc.store.save(clf, name, overwrite=body.overwrite)
    except TaskExistsError:
        raise exists from None
    return summary(clf)


@router.get("/tasks")
def list_tasks(request: Request) -> dict[str, Any]:
    return {"tasks": service(request).store.list()}


@router.get("/tasks/{name}")
def get_task(name: str, request: Request) -> dict[str, Any]:
    return summary(service(request).get(_name(name)))


@router.delete("/tasks/{name}")
def delete_task(name: str, request: Request) -> dict[str, Any]:
    if not service(request).store.delete(_name(name)):
        raise TaskNotFound(f"Task {name} does not exist")
    return {"deleted": name}


@router.post("/tasks/{name}/predict")
def predict_task(name: str, body: PredictRequest, request: Request) -> dict[str, Any]:
    """Label and per-label probabilities for each input (one object per input, in order)."""
    svc = service(request)
    clf = svc.get(_name(name))
    inputs = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    if not inputs or len(inputs) > MAX_INPUTS:
        raise ValidationFailed.one("inputs", f"give 1 to {MAX_INPUTS} texts")
    t0 = time.perf_counter()
    preds = predict(clf, inputs, svc.embedder)
    elapsed = (time.perf_counter() - t0) * 1000
    return {
        "task": name,
        "predictions": [
            {"label": p.label, "score": p.score, "probabilities": p.probabilities} for p in preds
        ],
        "time_ms": elapsed,
    }


@router.get("/presets")
def presets() -> dict[str, Any]:
    """The shipped few-shot prompt presets as JSON (name, title, description, format, ...)."""
    return {"presets": list_presets()}
