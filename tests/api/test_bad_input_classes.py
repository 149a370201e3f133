"""The bad-input classes of issue 12, on every route they apply to: lone UTF-16 surrogates in
any text field, non-finite and out-of-range numbers, negative and huge token ids, TGI's
max_new_tokens 0, task names and bodies. Each is a 4xx in the route's format naming the field
(`test_bad_input.CASES` holds the older cases; together they are the bad-input table)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from test_bad_input import FORMATS, HF

S = "\\ud800"  # a lone surrogate, as JSON spells it
HUGE = 2**70
MSG = [{"role": "user", "content": "hi"}]


def raw(template: str) -> str:
    """A raw JSON body (so `NaN`, `Infinity` and surrogate escapes reach the server as-is)."""
    return template.replace("$S", S)


CASES: list[tuple[str, str, Any, int, str]] = [
    # surrogates: every text field of every route
    (HF, "hf", raw('{"inputs": "$S x"}'), 400, "inputs"),
    (HF, "hf", raw('{"inputs": ["ok", "a$S"]}'), 400, "`1` in `inputs`"),
    (HF, "hf", raw('{"inputs": "x", "parameters": {"stop": ["$S"]}}'), 400, "stop"),
    (HF, "hf", raw('{"inputs": "x", "parameters": {"end_sequence": "$S"}}'), 400, "end_sequence"),
    (HF, "hf", raw('{"inputs": "x", "$S": 1}'), 400, "<key>"),
    ("/generate", "tgi", raw('{"inputs": "$S x"}'), 422, "inputs"),
    ("/generate", "tgi", raw('{"inputs": "x", "parameters": {"stop": ["$S"]}}'), 422, "stop"),
    ("/generate", "tgi", raw('{"inputs": "x", "model": "$S"}'), 422, "model"),
    ("/generate_stream", "tgi", raw('{"inputs": "$S"}'), 422, "inputs"),
    ("/", "tgi", raw('{"inputs": "\\udfff", "stream": true}'), 422, "inputs"),
    ("/tokenize", "tgi", raw('{"inputs": "$S"}'), 422, "inputs"),
    ("/v1/completions", "openai", raw('{"prompt": "$S"}'), 400, "prompt"),
    ("/v1/completions", "openai", raw('{"prompt": ["a", "$S"]}'), 400, "prompt.1"),
    ("/v1/completions", "openai", raw('{"prompt": "x", "stop": "$S"}'), 400, "stop"),
    ("/v1/completions", "openai", raw('{"prompt": "x", "user": "$S"}'), 400, "user"),
    (
        "/v1/chat/completions",
        "openai",
        raw('{"messages": [{"role": "user", "content": "$S"}]}'),
        400,
        "messages.0.content",
    ),
    (
        "/v1/chat/completions",
        "openai",
        raw('{"messages": [{"role": "user", "content": [{"type": "text", "text": "$S"}]}]}'),
        400,
        "messages.0.content.0.text",
    ),
    ("/tasks", "tgi", raw('{"name": "$S", "examples": []}'), 422, "name"),
    (
        "/tasks",
        "tgi",
        raw('{"name": "t", "examples": [{"text": "$S", "label": "a"}]}'),
        422,
        "examples.0.text",
    ),
    ("/tasks/t/predict", "tgi", raw('{"inputs": "$S"}'), 422, "inputs"),
    # bodies that are not UTF-8, or nested beyond any parser
    (HF, "hf", b'{"inputs": "\xed\xa0\x80"}', 400, "UTF-8"),
    ("/generate", "tgi", b'{"inputs": "\xff"}', 400, "UTF-8"),
    ("/v1/completions", "openai", b'{"prompt": "\xc3"}', 400, "UTF-8"),
    ("/generate", "tgi", '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "parsing"),
    # non-finite and out-of-range numbers
    (HF, "hf", raw('{"inputs": "x", "parameters": {"temperature": NaN}}'), 400, "temperature"),
    (HF, "hf", raw('{"inputs": "x", "parameters": {"temperature": 1e999}}'), 400, "temperature"),
    (HF, "hf", {"inputs": "x", "parameters": {"temperature": 101}}, 400, "temperature"),
    (HF, "hf", {"inputs": "x", "parameters": {"repetition_penalty": 0}}, 400, "repetition"),
    (HF, "hf", raw('{"inputs": "x", "parameters": {"top_p": -Infinity}}'), 400, "top_p"),
    (HF, "hf", {"inputs": "x", "parameters": {"top_p": 0}}, 400, "top_p"),
    (HF, "hf", {"inputs": "x", "parameters": {"max_time": 0}}, 400, "max_time"),
    (HF, "hf", {"inputs": "x", "parameters": {"seed": 2**64}}, 400, "seed"),
    (HF, "hf", {"inputs": "x", "parameters": {"max_new_tokens": HUGE}}, 400, "max_new_tokens"),
    (HF, "hf", {"inputs": "x", "parameters": {"top_k": 1.5}}, 400, "top_k"),
    (
        "/generate",
        "tgi",
        raw('{"inputs": "x", "parameters": {"temperature": Infinity}}'),
        422,
        "temperature",
    ),
    (
        "/generate",
        "tgi",
        raw('{"inputs": "x", "parameters": {"temperature": NaN}}'),
        422,
        "temperature",
    ),
    (
        "/generate",
        "tgi",
        {"inputs": "x", "parameters": {"temperature": -1e-300}},
        422,
        "temperature",
    ),
    (
        "/generate",
        "tgi",
        raw('{"inputs": "x", "parameters": {"repetition_penalty": 1e999}}'),
        422,
        "repetition_penalty",
    ),
    (
        "/generate",
        "tgi",
        {"inputs": "x", "parameters": {"repetition_penalty": 0}},
        422,
        "repetition_penalty",
    ),
    (
        "/generate",
        "tgi",
        {"inputs": "x", "parameters": {"max_new_tokens": 0}},
        422,
        "max_new_tokens",
    ),
    (
        "/generate_stream",
        "tgi",
        {"inputs": "x", "parameters": {"max_new_tokens": 0}},
        422,
        "max_new_tokens",
    ),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"truncate": 0}}, 422, "truncate"),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"seed": -1}}, 422, "seed"),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"top_k": 0}}, 422, "top_k"),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"typical_p": 0.5}}, 422, "typical_p"),
    (
        "/generate",
        "tgi",
        {"inputs": "x", "parameters": {"max_new_tokens": HUGE}},
        422,
        "max_new_tokens",
    ),
    ("/v1/completions", "openai", raw('{"prompt": "x", "temperature": NaN}'), 400, "temperature"),
    ("/v1/completions", "openai", {"prompt": "x", "temperature": 2.0001}, 400, "temperature"),
    ("/v1/completions", "openai", {"prompt": "x", "top_p": -0.1}, 400, "top_p"),
    (
        "/v1/completions",
        "openai",
        raw('{"prompt": "x", "repetition_penalty": Infinity}'),
        400,
        "repetition_penalty",
    ),
    ("/v1/completions", "openai", {"prompt": "x", "presence_penalty": 1}, 400, "presence_penalty"),
    ("/v1/completions", "openai", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", "openai", {"prompt": "x", "seed": HUGE}, 400, "seed"),
    ("/v1/chat/completions", "openai", {"messages": MSG, "temperature": -0.5}, 400, "temperature"),
    (
        "/v1/chat/completions",
        "openai",
        raw('{"messages": [{"role": "user", "content": "x"}], "top_p": Infinity}'),
        400,
        "top_p",
    ),
    ("/v1/chat/completions", "openai", {"messages": MSG, "n": 17}, 400, "n"),
    (
        "/v1/chat/completions",
        "openai",
        {"messages": MSG, "max_completion_tokens": HUGE},
        400,
        "max_tokens",
    ),
    # token ids: negative, and beyond the vocabulary or any integer type
    ("/v1/completions", "openai", {"prompt": [-1]}, 400, "prompt"),
    ("/v1/completions", "openai", {"prompt": [[1, 2], [3, -5]]}, 400, "prompt"),
    ("/v1/completions", "openai", {"prompt": [HUGE]}, 400, "prompt"),
    ("/v1/completions", "openai", {"prompt": [[HUGE]]}, 400, "prompt"),
    # tasks: names (a trailing newline is not a name), numbers
    ("/tasks", "tgi", {"name": "a\n", "examples": [{"text": "t", "label": "l"}]}, 422, "name"),
    ("/tasks", "tgi", {"name": "", "examples": [{"text": "t", "label": "l"}]}, 422, "name"),
    ("/tasks", "tgi", {"name": "a/b", "examples": [{"text": "t", "label": "l"}]}, 422, "name"),
    (
        "/tasks",
        "tgi",
        raw('{"name": "t", "examples": [{"text": "t", "label": "l"}], "c": Infinity}'),
        422,
        "c",
    ),
    ("/tasks", "tgi", {"name": "t", "examples": [{"text": "t", "label": "l"}], "c": 0}, 422, "c"),
    ("/tasks", "tgi", {"name": "t", "examples": [{"text": "", "label": "l"}]}, 422, "text"),
    ("/tasks/nope-task/predict", "tgi", {"inputs": "x"}, 404, "nope-task"),
    ("/tasks/t/predict", "tgi", {"inputs": 5}, 422, "inputs"),
]


@pytest.mark.parametrize(("path", "fmt", "body", "status", "field"), CASES)
def test_bad_input_class(api_server, path: str, fmt: str, body: Any, status: int, field: str):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    response = requests.post(
        api_server.url + path, data=data, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    FORMATS[fmt](response.json(), field)


def test_task_get_with_newline_name(api_server) -> None:
    response = requests.get(api_server.url + "/tasks/a%0A")
    assert response.status_code == 422 and response.json()["error_type"] == "validation"


def test_surrogate_pairs_are_ordinary_text(api_server) -> None:
    """An escaped pair is one character (an emoji); it passes where a lone half is refused."""
    body = '{"inputs": "smile \\ud83d\\ude00", "parameters": {"max_new_tokens": 1}}'
    response = requests.post(api_server.url + "/generate", data=body)
    assert response.status_code == 200, response.text
    tokens = requests.post(api_server.url + "/tokenize", data='{"inputs": "\\ud83d\\ude00"}')
    assert tokens.status_code == 200 and tokens.json()


def test_the_table_has_enough_cases() -> None:
    from test_bad_input import CASES as OLDER

    assert len(OLDER) + len(CASES) >= 80
