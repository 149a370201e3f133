"""TGI routes: /generate details and prompt logprobs, the `/` compat route, the raw SSE format
of /generate_stream, /tokenize, /info, /health, /metrics."""

from __future__ import annotations

import json

import requests


def test_generate_details_prefill_top_tokens(api_server) -> None:
    body = {
        "inputs": "Hello world",
        "parameters": {
            "max_new_tokens": 4,
            "details": True,
            "decoder_input_details": True,
            "top_n_tokens": 2,
            "seed": 5,
            "do_sample": True,
        },
    }
    r = requests.post(api_server.url + "/generate", json=body)
    assert r.status_code == 200
    d = r.json()["details"]
    assert d["seed"] == 5 and d["generated_tokens"] == len(d["tokens"])
    assert [p["text"] for p in d["prefill"]] == ["Hello", " world"]
    assert d["prefill"][0]["logprob"] is None and d["prefill"][1]["logprob"] < 0
    assert all(len(t) == 2 for t in d["top_tokens"])
    assert r.headers["x-prompt-tokens"] == "2"
    assert set(d["tokens"][0]) == {"id", "text", "logprob", "special"}


def test_compat_route(api_server) -> None:
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 3, "return_full_text": True}}
    r = requests.post(api_server.url + "/", json=body)
    assert r.status_code == 200 and isinstance(r.json(), list)
    assert r.json()[0]["generated_text"].startswith("Hi")


def test_stream_format(api_server) -> None:
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 4, "details": True}}
    r = requests.post(api_server.url + "/generate_stream", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in r.text
    events = [json.loads(e[len("data:") :]) for e in r.text.strip().split("\n\n")]
    assert all(e["generated_text"] is None for e in events[:-1])
    final = events[-1]
    assert final["generated_text"] == "".join(e["token"]["text"] for e in events)
    assert final["details"]["input_length"] == 1
    assert final["details"]["generated_tokens"] == len(events)


def test_tokenize_info_health_metrics(api_server) -> None:
    toks = requests.post(api_server.url + "/tokenize", json={"inputs": "Hello world"}).json()
    assert [(t["text"], t["start"], t["stop"]) for t in toks] == [
        ("Hello", 0, 5),
        (" world", 5, 11),
    ]
    info = requests.get(api_server.url + "/info").json()
    assert info["model_id"] == "tiny" and info["max_total_tokens"] == 256
    assert {m["name"] for m in info["models"]} == {"tiny", "chat"}
    assert [m["backend"] for m in info["models"]] == ["native", "native"]  # GPT-Neo is native
    assert [m["prefix_sharing"] for m in info["models"]] == [True, True]
    listing = requests.get(api_server.url + "/v1/models").json()["data"]
    assert [m["backend"] for m in listing] == ["native", "native"]
    health = requests.get(api_server.url + "/health")
    assert health.status_code == 200 and health.text == ""
    requests.post(
        api_server.url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
    )
    m = requests.get(api_server.url + "/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    for name in (
        'fewshot_requests_total{model="tiny",route="/generate"}',
        "fewshot_queue_seconds_bucket",
        "fewshot_time_to_first_token_seconds_bucket",
        'fewshot_generated_tokens_total{model="tiny"}',
        'fewshot_prefix_cache_hit_rate{model="tiny"}',
        'fewshot_engine_running_requests{model="tiny"}',
        'fewshot_engine_weight_bytes{model="tiny"}',
        'fewshot_engine_kv_cache_bytes_touched{model="tiny"}',
        'fewshot_engine_kv_cache_blocks_used{model="tiny"}',
        'fewshot_engine_kv_cache_blocks_free{model="tiny"}',
        'fewshot_engine_kv_cache_blocks_cached{model="tiny"}',
        'fewshot_model_ready{model="chat"} 1.0',
    ):
        assert name in m.text, name


def test_openapi_document(api_server) -> None:
    doc = requests.get(api_server.url + "/openapi.json").json()
    paths = set(doc["paths"])
    assert {
        "/models/{model_id}",
        "/generate",
        "/generate_stream",
        "/",
        "/tokenize",
        "/info",
        "/health",
        "/metrics",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
    } <= paths
    schemas = set(doc["components"]["schemas"])
    assert {
        "HFRequest",
        "HFParameters",
        "GenerateRequest",
        "GenerateParameters",
        "GenerateResponse",
        "CompletionRequest",
        "CompletionResponse",
        "ChatCompletionRequest",
        "ChatCompletionResponse",
        "OpenAIErrorResponse",
        "ErrorResponse",
        "HFErrorResponse",
        "Info",
    } <= schemas
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
