"""The client against the project's real app (create_app) under uvicorn, with a tiny random
GPT-Neo and the real GPT-2 tokenizer: generation, errors, rank scores and /tasks behind auth.

The server's answers must equal the local engine's for the same prompt (greedy), and the rank
scores read from TGI's prefill logprobs must equal `LLM.loglikelihood`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fewshot import Client
from fewshot.toolkit.backends import RemoteBackend
from fewshot.toolkit.client import FewShotAPIError
from fewshot.toolkit.prompts import FewShotPrompt

pytest.importorskip("fewshot.api.app")

TOKEN = "secret-key"
PROMPT = FewShotPrompt(
    description="Give the opposite of each word.",
    examples=[("hot", "cold"), ("up", "down")],
    format="Word: {input}\nOpposite: {output}",
)


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
