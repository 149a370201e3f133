"""Table-driven bad input across the three wire formats: each answer is a 4xx in the route's
error format naming the field, and the server keeps serving."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

LONG = "hello " * 600  # > the tiny model's 255 input tokens
STOPS5 = ["a", "b", "c", "d", "e"]


def check_hf(body: Any, field: str) -> None:
    err = body["error"]
    text = " ".join(err) if isinstance(err, list) else err
    assert field in text, text


def check_tgi(body: Any, field: str) -> None:
    assert set(body) >= {"error", "error_type"}
    assert field in body["error"], body


def check_openai(body: Any, field: str) -> None:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert field in (err["param"] or "") or field in err["message"], err


FORMATS = {"hf": check_hf, "tgi": check_tgi, "openai": check_openai}

HF = "/models/tiny"
CASES: list[tuple[str, str, Any, int, str]] = [
    # (path, format, body (str = raw), status, field named)
    (HF, "hf", "{not json", 400, "JSON"),
    (HF, "hf", {"parameters": {}}, 400, "inputs"),
    (HF, "hf", {"inputs": 123}, 400, "inputs"),
    (HF, "hf", {"inputs": ""}, 400, "inputs"),
    (HF, "hf", {"inputs": []}, 400, "inputs"),
    (HF, "hf", {"inputs": ["x"] * 9}, 400, "inputs"),
    (HF, "hf", {"inputs": LONG}, 400, "inputs"),
    (HF, "hf", {"inputs": "x", "parameters": {"top_k": 0}}, 400, "top_k"),
    (HF, "hf", {"inputs": "x", "parameters": {"temperature": -1}}, 400, "temperature"),
    (HF, "hf", {"inputs": "x", "parameters": {"max_new_tokens": "many"}}, 400, "max_new_tokens"),
    (HF, "hf", {"inputs": "x", "parameters": {"max_new_tokens": 100000}}, 400, "max_new_tokens"),
    (
        HF,
        "hf",
        {"inputs": "x", "parameters": {"num_return_sequences": 11}},
        400,
        "num_return_sequences",
    ),
    (HF, "hf", {"inputs": "x", "parameters": {"stop": STOPS5}}, 400, "stop"),
    (HF, "hf", {"inputs": "x", "parameters": {"stop": [""]}}, 400, "stop"),
    (HF, "hf", {"inputs": "x", "parameters": {"max_time": 500}}, 400, "max_time"),
    (HF, "hf", {"inputs": "x", "parameters": {"typo_param": 1}}, 400, "typo_param"),
    (HF, "hf", {"inputs": "x", "options": {"use_cache": "sometimes"}}, 400, "use_cache"),
    ("/models/no-such-model", "hf", {"inputs": "x"}, 404, "no-such-model"),
    ("/generate", "tgi", "[1, 2", 400, "JSON"),
    ("/generate", "tgi", {"parameters": {}}, 422, "inputs"),
    ("/generate", "tgi", {"inputs": ["a"]}, 422, "inputs"),
    ("/generate", "tgi", {"inputs": ""}, 422, "inputs"),
    ("/generate", "tgi", {"inputs": LONG}, 422, "inputs"),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"top_p": 1.5}}, 422, "top_p"),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"top_n_tokens": 50}}, 422, "top_n_tokens"),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"stop": STOPS5}}, 422, "stop"),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"best_of": 2}}, 422, "best_of"),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"watermark": True}}, 422, "watermark"),
    (
        "/generate",
        "tgi",
        {"inputs": "x", "parameters": {"grammar": {"type": "json"}}},
        422,
        "grammar",
    ),
    (
        "/generate",
        "tgi",
        {"inputs": "x", "parameters": {"max_new_tokens": -1}},
        422,
        "max_new_tokens",
    ),
    ("/generate", "tgi", {"inputs": "x", "parameters": {"nope": 1}}, 422, "nope"),
    ("/generate", "tgi", {"inputs": "x", "model": "nope"}, 404, "nope"),
    (
        "/generate_stream",
        "tgi",
        {"inputs": "x", "parameters": {"decoder_input_details": True}},
        422,
        "decoder_input_details",
    ),
    ("/", "tgi", {"inputs": 5, "stream": True}, 422, "inputs"),
    ("/tokenize", "tgi", {"inputs": ""}, 422, "inputs"),
    ("/v1/completions", "openai", "nope", 400, "JSON"),
    ("/v1/completions", "openai", {"model": "tiny"}, 400, "prompt"),
    ("/v1/completions", "openai", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", "openai", {"prompt": "x", "bogus": 1}, 400, "bogus"),
    ("/v1/completions", "openai", {"prompt": "x", "temperature": 3}, 400, "temperature"),
    ("/v1/completions", "openai", {"prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", "openai", {"prompt": "x", "stop": STOPS5}, 400, "stop"),
    ("/v1/completions", "openai", {"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ("/v1/completions", "openai", {"prompt": "x", "suffix": "y"}, 400, "suffix"),
    ("/v1/completions", "openai", {"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ("/v1/completions", "openai", {"prompt": [[1, 99999999]]}, 400, "prompt"),
    ("/v1/completions", "openai", {"prompt": LONG}, 400, "prompt"),
    ("/v1/completions", "openai", {"prompt": "x", "model": "gpt-4"}, 404, "gpt-4"),
    ("/v1/chat/completions", "openai", {"messages": []}, 400, "messages"),
    (
        "/v1/chat/completions",
        "openai",
        {"messages": [{"role": "robot", "content": "x"}]},
        400,
        "role",
    ),
    (
        "/v1/chat/completions",
        "openai",
        {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        400,
        "top_logprobs",
    ),
    (
        "/v1/chat/completions",
        "openai",
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
        400,
        "tools",
    ),
]


@pytest.mark.parametrize(("path", "fmt", "body", "status", "field"), CASES)
def test_bad_input(api_server, path: str, fmt: str, body: Any, status: int, field: str) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    response = requests.post(
        api_server.url + path, data=data, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    FORMATS[fmt](response.json(), field)


def test_server_survives_bad_input(api_server) -> None:
    assert requests.get(api_server.url + "/health").status_code == 200
    ok = requests.post(
        api_server.url + HF, json={"inputs": "still alive", "parameters": {"max_new_tokens": 2}}
    )
    assert ok.status_code == 200


def test_unknown_route_and_method(api_server) -> None:
    assert requests.get(api_server.url + "/generate").status_code == 405
    missing = requests.post(api_server.url + "/v1/nothing", json={})
    assert missing.status_code == 404 and "message" in missing.json()["error"]


def test_errors_are_counted(api_server) -> None:
    requests.post(api_server.url + "/generate", json={"inputs": "x", "parameters": {"top_p": 2}})
    text = requests.get(api_server.url + "/metrics").text
    assert 'fewshot_request_errors_total{error_type="validation",route="/generate"}' in text
