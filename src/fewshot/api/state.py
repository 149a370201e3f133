"""What one app instance holds: its settings, the served models (loading in background threads),
admission control, the response cache and the metrics.

Models load in threads started from the app's lifespan, so the server answers (503 "currently
loading", or waits when asked) while they load. `get_state(request)` gives routes -- the
toolkit's too -- this object; `await state.llm_for(model, wait=...)` gives a loaded `LLM`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request

from fewshot.api.errors import ModelLoading, ModelNotFound, ModelUnavailable, ShuttingDown
from fewshot.api.limits import Admission
from fewshot.api.metrics import Metrics
from fewshot.api.response_cache import ResponseCache
from fewshot.settings import Settings

if TYPE_CHECKING:
    from fewshot.engine.llm import LLM

Loader = Callable[[str, Settings], "LLM"]

log = logging.getLogger("fewshot.api")

# names a client sends when it has no model name to give (huggingface_hub sends "dummy" to a
# URL, "tgi" is TGI's convention): they mean the default (first) model
DEFAULT_MODEL_NAMES = {"", "dummy", "tgi", "default"}

_LOAD_BYTES_PER_S = 150e6  # rough read + convert throughput for the estimated_time of a load


def load_llm(source: str, settings: Settings) -> LLM:
    """The default loader: `LLM.load` with the engine settings."""
    from fewshot.engine.config import EngineConfig
    from fewshot.engine.llm import LLM

    return LLM.load(
        source,
        dtype=settings.dtype,
        device=settings.device,
        config=EngineConfig.from_settings(settings),
        cache_dir=settings.cache_dir,
        hf_token=settings.hf_token,
        kernel_isa=settings.kernel_isa,
    )


def parse_model_arg(text: str) -> tuple[str, str]:
    """`alias=source` -> (alias, source); a bare source is served under its own name. The alias
    may look like a hub id (`EleutherAI/gpt-neo-2.7B=./tiny`), to stand in for a hosted model."""
    alias, sep, source = text.partition("=")
    if sep and alias.strip() and source.strip() and not Path(text).exists():
        return alias.strip(), source.strip()
    return text, text


def _size_on_disk(source: str) -> int | None:
    path = Path(source).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


class ServedModel:
    """One model the server offers: its names, its load status and, once loaded, its LLM."""

    def __init__(self, name: str, source: str, settings: Settings) -> None:
        self.name = name
        self.source = source
        self.llm: LLM | None = None
        self.error: str | None = None
        self.started_at = time.monotonic()
        size = _size_on_disk(source)
        self.expected_load_s = (
            1.0 + size / _LOAD_BYTES_PER_S if size is not None else settings.model_load_estimate_s
        )
        self._done = threading.Event()
        self._ready_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def status(self) -> str:
        if self.llm is not None:
            return "ready"
        return "failed" if self.error else "loading"

    @property
    def backend(self) -> str | None:
        """Which code runs the model: "native" (fewshot's own) or "fallback" (transformers)."""
        if self.llm is None:
            return None
        return "native" if self.llm.native else "fallback"

    @property
    def prefix_sharing(self) -> bool | None:
        """Whether requests share cached prompt prefixes (the fallback runs without)."""
        return None if self.llm is None else bool(self.llm.stats()["prefix_sharing"])

    def names(self) -> set[str]:
        names = {self.name, self.source}
        path = Path(self.source)
        if path.name and path.name != self.source:
            names.add(path.name)
        if self.llm is not None and getattr(self.llm, "name", None):
            names.add(str(self.llm.name))
        return names

    def estimated_time(self) -> float:
        elapsed = time.monotonic() - self.started_at
        return max(1.0, self.expected_load_s - elapsed)

    def start_loading(
        self, loader: Loader, settings: Settings, on_loaded: Callable[[ServedModel], None]
    ) -> None:
        """Load in a daemon thread; wake async waiters on the running loop when done."""
        self._loop = asyncio.get_running_loop()
        self._ready_event = asyncio.Event()
        self.started_at = time.monotonic()
        threading.Thread(
            target=self._load,
            args=(loader, settings, on_loaded),
            name=f"load-{self.name}",
            daemon=True,
        ).start()

    def _load(
        self, loader: Loader, settings: Settings, on_loaded: Callable[[ServedModel], None]
    ) -> None:
        try:
            llm = loader(self.source, settings)
        except Exception as exc:  # reported to clients as 503 and on /health
            log.exception("loading model %s failed", self.name)
            self.error = f"{type(exc).__name__}: {exc}"
        else:
            self.llm = llm
            log.info("model %s ready (%.1fs)", self.name, time.monotonic() - self.started_at)
        self._done.set()
        on_loaded(self)
        if self._loop is not None and self._ready_event is not None:
            try:
                self._loop.call_soon_threadsafe(self._ready_event.set)
            except RuntimeError:  # loop closed: the server is gone
                pass

    async def wait(self, timeout: float) -> None:
        """Wait (without blocking the loop) until the load finished, or `timeout` seconds."""
        if self._done.is_set() or self._ready_event is None:
            return
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            pass


class AppState:
    """Everything one app instance shares between requests."""

    def __init__(self, settings: Settings, loader: Loader | None = None) -> None:
        self.settings = settings
        self.loader = loader or load_llm
        self.models: list[ServedModel] = []
        for arg in settings.models:
            name, source = parse_model_arg(arg)
            if any(m.name == name for m in self.models):
                raise ValueError(f"model name {name!r} is given twice")
            self.models.append(ServedModel(name, source, settings))
        if not self.models:
            raise ValueError("no model to serve")
        self.api_keys: list[bytes] = [k.encode("utf-8") for k in settings.all_api_keys()]
        self.admission = Admission(settings.max_concurrent_requests)
        self.response_cache = ResponseCache(settings.response_cache_entries)
        self.metrics = Metrics(self._engine_stats)
        self._closed = False
        self.draining = False
        for m in self.models:
            self.metrics.model_ready.labels(m.name).set(0)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start loading every model (call from the running event loop)."""
        for m in self.models:
            m.start_loading(self.loader, self.settings, self._on_loaded)

    def _on_loaded(self, model: ServedModel) -> None:
        self.metrics.model_ready.labels(model.name).set(1 if model.llm is not None else 0)
        if model.llm is not None:
            # what is alive now (imports, modules, the engine) lives as long as the server:
            # out of the collector's sight, its full passes walk only what requests allocate,
            # not the whole torch/transformers object graph (vLLM's engine does the same)
            gc.collect()
            gc.freeze()
        if self._closed and model.llm is not None:  # finished loading after shutdown
            self._close_model(model)

    def begin_drain(self) -> None:
        """Shutdown started: refuse new requests (503), let the admitted ones finish."""
        self.draining = True

    def close(self) -> None:
        self._closed = True
        for m in self.models:
            self._close_model(m)

    @staticmethod
    def _close_model(model: ServedModel) -> None:
        llm, model.llm = model.llm, None
        if llm is not None:
            model.error = "server shutting down"
            llm.close()

    # --- lookup -------------------------------------------------------------------------------

    @property
    def default_model(self) -> ServedModel:
        return self.models[0]

    def resolve(self, name: str | None) -> ServedModel:
        """The served model called `name` (its alias, source, directory name or engine name);
        None and the placeholder names clients send mean the default model."""
        if name is None or name.strip() in DEFAULT_MODEL_NAMES:
            return self.default_model
        for m in self.models:
            if m.name == name:
                return m
        for m in self.models:
            if name in m.names():
                return m
        raise ModelNotFound(name, [m.name for m in self.models])

    async def llm_for(self, model: ServedModel, *, wait: bool = False) -> LLM:
        """The loaded LLM; while loading, 503 with estimated_time unless `wait`; 503 once the
        server is shutting down."""
        if self.draining:
            raise ShuttingDown()
        if model.llm is None and model.error is None and wait:
            await model.wait(self.settings.model_wait_timeout_s)
        if model.llm is not None:
            return model.llm
        if model.error is not None:
            raise ModelUnavailable(f"Model {model.name} is not available: {model.error}")
        raise ModelLoading(model.name, model.estimated_time())

    def _engine_stats(self) -> Iterable[tuple[str, dict[str, Any]]]:
        for m in self.models:
            llm = m.llm
            if llm is None:
                continue
            try:
                yield m.name, dict(llm.stats())
            except Exception:  # a scrape must never fail because of one engine
                log.exception("stats of %s failed", m.name)


async def get_state(request: Request) -> AppState:
    """FastAPI dependency: the app's AppState (a coroutine: runs on the event loop, no worker
    thread per request)."""
    return request.app.state.fewshot
