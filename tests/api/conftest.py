"""API test fixtures: real uvicorn servers on 127.0.0.1 (one per configuration, started once)
over the session's tiny random GPT-Neo (`tiny_gpt_neo_dir`, tests/conftest.py: transformers'
save_pretrained + the real GPT-2 tokenizer), called with real clients. `tiny_chat_dir` is the
same model with a chat template. Models load through `LLM.load(dir)`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import Server, make_settings, serve

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_dir(tiny_gpt_neo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-chat")
    for f in tiny_gpt_neo_dir.iterdir():
        shutil.copy(f, path / f.name)
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return path


@pytest.fixture(scope="session")
def api_server(tiny_gpt_neo_dir: Path, tiny_chat_dir: Path) -> Iterator[Server]:
    """The shared server: no auth; the tiny model as `tiny` (default) and `chat` (templated)."""
    settings = make_settings(f"tiny={tiny_gpt_neo_dir}", f"chat={tiny_chat_dir}")
    with serve(settings) as server:
        yield server
