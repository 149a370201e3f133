"""Helpers of the API tests: run an app under uvicorn on a free 127.0.0.1 port in a thread,
build test Settings, and load the tiny GPT-Neo with `LLM.from_model` (for loaders that a test
replaces, e.g. one that blocks until released)."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.settings import Settings


def from_model_loader(source: str, settings: Settings) -> Any:
    """Build the LLM with `LLM.from_model`: the native GPT-Neo over the saved HF weights and
    the directory's tokenizer (no dependency on the loaders)."""
    from safetensors.torch import load_file
    from transformers import GPTNeoConfig

    from fewshot.engine.llm import LLM
    from fewshot.models.gpt_neo import GPTNeoForCausalLM
    from fewshot.models.tokenizer import Tokenizer

    path = Path(source)
    model = GPTNeoForCausalLM(GPTNeoConfig.from_pretrained(path)).eval()
    state = load_file(path / "model.safetensors")
    model.load_hf_state_dict(state)
    return LLM.from_model(
        model,
        Tokenizer.from_dir(path),
        name=path.name,
        threads=settings.threads,
        kv_cache_mb=settings.kv_cache_mb,
        max_batch_size=settings.max_batch_size,
    )


def make_settings(*models: str, **fields: Any) -> Settings:
    base: dict[str, Any] = {
        "threads": 1,
        "kv_cache_mb": 16,
        "max_batch_size": 8,
        "cache_dir": Path(tempfile.mkdtemp(prefix="fewshot-api-cache-")),
    }
    return Settings(models=list(models), **{**base, **fields})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    app: Any

    @property
    def state(self) -> Any:
        return self.app.state.fewshot

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while any(m.status == "loading" for m in self.state.models):
            if time.monotonic() > deadline:
                raise TimeoutError("models did not load")
            time.sleep(0.02)
        failed = [m.error for m in self.state.models if m.error]
        assert not failed, failed


@contextlib.contextmanager
def serve(
    settings: Settings, loader: Callable[..., Any] | None = None, ready: bool = True
) -> Iterator[Server]:
    """Run create_app(settings) on a free 127.0.0.1 port in a thread, configured as
    `fewshot serve` configures uvicorn (api/server.py)."""
    from fewshot.api.app import create_app
    from fewshot.api.server import Server as UvicornServer
    from fewshot.api.server import uvicorn_config

    app = create_app(settings, loader=loader)
    port = _free_port()
    config = uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
    server = UvicornServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    handle = Server(f"http://127.0.0.1:{port}", app)
    try:
        if ready:
            handle.wait_ready()
        yield handle
    finally:
        server.should_exit = True
        thread.join(timeout=30)
