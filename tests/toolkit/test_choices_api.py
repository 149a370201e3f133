"""`choices` through the real server (tiny random GPT-Neo): HF route and TGI `/generate` via
`requests` and huggingface_hub's raw POST, OpenAI completions' `guided_choice`; the answer is
always one of the choices, scored as `LLM.loglikelihood` scores it locally; bad choices are a
4xx naming the field and the server keeps serving."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from fewshot.toolkit.choices import MAX_CHOICE_CHARS, MAX_CHOICES, llm_scorer, rank_choices

pytest.importorskip("fewshot.api.app")

TOKEN = "secret-key"  # conftest's real_server key
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "Review: the food was cold and late\nSentiment:"
CHOICES = ["Positive", "Negative", "Mixed feelings"]


def _post(url: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, headers=AUTH, timeout=60)


def test_hf_route_answers_one_choice_with_every_logprob(real_server: Any, local: Any) -> None:
    url, _ = real_server
    r = _post(url, "/models/tiny", {"inputs": PROMPT, "parameters": {"choices": CHOICES}})
    assert r.status_code == 200, r.text
    [item] = r.json()
    scored = {c["text"]: c["logprob"] for c in item["details"]["choices"]}
    assert item["generated_text"] in CHOICES and set(scored) == set(CHOICES)
    assert item["generated_text"] == max(scored, key=scored.get)
    [expected] = rank_choices(llm_scorer(local.llm), [PROMPT], CHOICES)  # the eval's scoring
    assert [scored[c] for c in CHOICES] == pytest.approx(expected.logprobs, abs=1e-3)
    # A list of inputs: one answer list per input.
    both = _post(
        url,
        "/models/tiny",
        {"inputs": [PROMPT, "Great!\nSentiment:"], "parameters": {"choices": CHOICES}},
    )
    assert both.status_code == 200 and [x[0]["generated_text"] in CHOICES for x in both.json()] == [
        True,
        True,
    ]


def test_tgi_generate_with_huggingface_hub_raw_post(real_server: Any) -> None:
    from huggingface_hub import get_session
    from huggingface_hub.utils import hf_raise_for_status

    url, _ = real_server
    for prompt in (PROMPT, "Sentiment: ", "x"):
        response = get_session().post(
            f"{url}/generate",
            json={"inputs": prompt, "parameters": {"choices": CHOICES}},
            headers=AUTH,
        )
        hf_raise_for_status(response)
        out = response.json()
        assert out["generated_text"] in CHOICES
        assert out["details"]["finish_reason"] == "eos_token"
        assert len(out["details"]["choices"]) == len(CHOICES)


def test_openai_completions_guided_choice(real_server: Any) -> None:
    url, _ = real_server
    r = _post(
        url,
        "/v1/completions",
        {"model": "tiny", "prompt": [PROMPT, "Sentiment:"], "guided_choice": CHOICES},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        top = choice["logprobs"]["top_logprobs"][0]
        assert choice["text"] in CHOICES and choice["text"] == max(top, key=top.get)
    assert body["usage"]["completion_tokens"] >= 2


@pytest.mark.parametrize(
    ("choices", "why"),
    [
        ([], "empty"),
        ("Positive", "list"),
        ([f"c{i}" for i in range(MAX_CHOICES + 1)], str(MAX_CHOICES)),
        (["x" * (MAX_CHOICE_CHARS + 1)], str(MAX_CHOICE_CHARS)),
        (["a", "a"], "distinct"),
        (["ok", ""], "non-empty"),
        ([1, 2], "strings"),
    ],
)
def test_bad_choices_are_4xx_naming_the_field(real_server: Any, choices: Any, why: str) -> None:
    url, _ = real_server
    hf = _post(url, "/models/tiny", {"inputs": PROMPT, "parameters": {"choices": choices}})
    assert hf.status_code == 400 and "choices" in " ".join(hf.json()["error"]) and why in hf.text
    tgi = _post(url, "/generate", {"inputs": PROMPT, "parameters": {"choices": choices}})
    assert tgi.status_code == 422 and "parameters.choices" in tgi.json()["error"]
    oai = _post(
        url, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "guided_choice": choices}
    )
    assert oai.status_code == 400 and oai.json()["error"]["param"] == "guided_choice"


def test_choices_do_not_stream_and_the_server_keeps_serving(real_server: Any) -> None:
    url, _ = real_server
    body = {"inputs": PROMPT, "parameters": {"choices": CHOICES}}
    assert _post(url, "/generate_stream", body).status_code == 422
    assert "parameters.choices" in _post(url, "/generate_stream", body).json()["error"]
    assert _post(url, "/models/tiny", {**body, "stream": True}).status_code == 400
    oai = {"model": "tiny", "prompt": PROMPT, "guided_choice": CHOICES, "stream": True}
    assert _post(url, "/v1/completions", oai).json()["error"]["param"] == "guided_choice"
    assert _post(url, "/generate", body).status_code == 200


def test_the_choices_of_a_prompt_share_its_prefill(local: Any) -> None:
    """All choices go to the engine together: the prompt is prefilled once and every other
    choice takes it from the prefix cache (counted in the engine's stats, not timed)."""
    llm = local.llm
    prompt = "Unique context for this test only. " * 12 + "\nAnswer:"
    n_prompt = len(llm.encode(prompt))
    before = llm.stats()["prefix_cache"]["hit_tokens"]
    [ranked] = rank_choices(llm_scorer(llm), [prompt], ["alpha", "beta", "gamma", "delta"])
    hit = llm.stats()["prefix_cache"]["hit_tokens"] - before
    assert len(ranked.logprobs) == 4
    assert hit >= 3 * (n_prompt - 32)  # three of four choices reuse (nearly) the whole prompt
