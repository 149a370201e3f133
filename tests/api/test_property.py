"""Property-based tests over each route's request schema: hostile strings (lone surrogates,
control characters, BOMs, line separators), floats at the edges (NaN, infinities, subnormals,
-0.0), huge and negative ints and arbitrarily nested JSON in every field. Whatever the body,
the answer is a well-formed 200 or a 4xx JSON error in the route's format -- never a 5xx.

Token counts are drawn small (or invalid), so the ~300 requests stay fast on the tiny model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NASTY = ["\ud800", "\udfff", "\ud83d", "\x00", "\x1b[2J", "\u2028", "\ufeff", "\U0001f600", "é"]
texts = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.characters(), st.sampled_from(NASTY)), max_size=6).map("".join),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e-324, -0.0, 1e-45, 1e308, 0.0, 0.5, 1.0, 2.0, 100.0, 101.0]),
)
ints = st.one_of(
    st.integers(-3, 6), st.sampled_from([-(2**63), 2**63, 2**64, 2**70, 10**30, 255, 256])
)
counts = st.one_of(st.integers(-2, 4), st.sampled_from([0, 2**64, 10**9, -(2**70)]))
json_values = st.recursive(
    st.none() | st.booleans() | floats | ints | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


def field(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """A field's value: usually of its own kind, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, json_values)


def body(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {k: field(v) for k, v in required.items()},
        optional={k: field(v) for k, v in optional.items()},
    )


SAMPLING = {
    "temperature": floats,
    "top_k": ints,
    "top_p": floats,
    "repetition_penalty": floats,
    "seed": ints,
    "stop": st.lists(texts, max_size=3) | texts,
}
TGI_PARAMS = body(
    {},
    {
        **SAMPLING,
        "max_new_tokens": counts,
        "do_sample": st.booleans(),
        "details": st.booleans(),
        "top_n_tokens": ints,
        "truncate": ints,
        "typical_p": floats,
        "return_full_text": st.booleans(),
    },
)
HF_PARAMS = body(
    {},
    {
        **SAMPLING,
        "max_new_tokens": counts,
        "do_sample": st.booleans(),
        "num_return_sequences": st.integers(-1, 3),
        "max_time": floats,
        "end_sequence": texts,
        "return_full_text": st.booleans(),
    },
)
prompts = st.one_of(
    texts,
    st.lists(texts, max_size=3),
    st.lists(ints, max_size=4),
    st.lists(st.lists(ints, max_size=3), max_size=2),
)
messages = st.lists(
    body(
        {"role": st.sampled_from(["user", "system", "assistant", "robot"])},
        {"content": texts | st.lists(body({"type": st.just("text"), "text": texts}, {}))},
    ),
    max_size=3,
)
OPENAI_SAMPLING = {**SAMPLING, "n": st.integers(-1, 3), "model": texts, "user": texts}

ROUTES: dict[str, tuple[str, st.SearchStrategy]] = {
    "/models/tiny": (
        "hf",
        body(
            {"inputs": texts | st.lists(texts, max_size=3)},
            {"parameters": HF_PARAMS, "options": body({}, {"use_cache": st.booleans()})},
        ),
    ),
    "/generate": ("tgi", body({"inputs": texts}, {"parameters": TGI_PARAMS, "model": texts})),
    "/generate_stream": ("tgi", body({"inputs": texts}, {"parameters": TGI_PARAMS})),
    "/": ("tgi", body({"inputs": texts}, {"parameters": TGI_PARAMS, "stream": st.booleans()})),
    "/tokenize": ("tgi", body({"inputs": texts}, {"model": texts})),
    "/v1/completions": (
        "openai",
        body(
            {"prompt": prompts},
            {
                **OPENAI_SAMPLING,
                "max_tokens": counts,
                "logprobs": ints,
                "echo": st.booleans(),
                "stream": st.booleans(),
            },
        ),
    ),
    "/v1/chat/completions": (
        "openai",
        body(
            {"messages": messages},
            {
                **OPENAI_SAMPLING,
                "max_tokens": counts,
                "logprobs": st.booleans(),
                "top_logprobs": ints,
                "stream": st.booleans(),
            },
        ),
    ),
    "/tasks": (
        "tgi",
        body(
            {"name": texts, "examples": st.lists(body({"text": texts, "label": texts}, {}))},
            {"c": floats, "overwrite": st.just(False)},
        ),
    ),
    "/tasks/none-such/predict": ("tgi", body({"inputs": texts | st.lists(texts)}, {})),
}


def well_formed_error(wire: str, error: Any) -> bool:
    if wire == "hf":
        return isinstance(error.get("error"), str | list)
    if wire == "tgi":
        return isinstance(error.get("error"), str) and isinstance(error.get("error_type"), str)
    detail = error.get("error")
    return isinstance(detail, dict) and set(detail) == {"message", "type", "param", "code"}


def check(response: requests.Response, wire: str) -> None:
    assert response.status_code < 500, response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.status_code == 200
        for line in response.text.splitlines():
            if line.startswith("data:") and line != "data: [DONE]":
                json.loads(line[5:])
        return
    payload = response.json()
    if response.status_code >= 400:
        assert well_formed_error(wire, payload), payload
    else:
        assert response.status_code in (200, 201)


@pytest.mark.parametrize("path", list(ROUTES))
def test_any_body_is_a_200_or_a_formatted_4xx(api_server, path: str) -> None:
    wire, strategy = ROUTES[path]
    http = requests.Session()

    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(data: dict[str, Any]) -> None:
        raw = json.dumps(data, allow_nan=True).encode()
        check(http.post(api_server.url + path, data=raw, timeout=60), wire)

    run()
    assert http.get(api_server.url + "/health").status_code == 200
