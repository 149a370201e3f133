"""The Hugging Face Inference API route beyond the seed snippet: lists of inputs, several return
sequences, stop vs end_sequence, the response cache, headers, the prefix cache."""

from __future__ import annotations

import requests


def post(server, body, model: str = "tiny") -> requests.Response:
    r = requests.post(f"{server.url}/models/{model}", json=body)
    assert r.status_code == 200, r.text
    return r


GREEDY = {"max_new_tokens": 8, "do_sample": False, "return_full_text": False}


def test_shapes(api_server) -> None:
    one = post(api_server, {"inputs": "Hello", "parameters": GREEDY}).json()
    assert len(one) == 1 and set(one[0]) == {"generated_text"}
    many = post(api_server, {"inputs": ["Hello", "Bye"], "parameters": GREEDY}).json()
    assert len(many) == 2 and many[0] == one
    seqs = post(
        api_server,
        {
            "inputs": "Hello",
            "parameters": {"num_return_sequences": 3, "seed": 1, "max_new_tokens": 4},
        },
    ).json()
    assert len(seqs) == 3 and all(s["generated_text"].startswith("Hello") for s in seqs)
    full = post(api_server, {"inputs": "Hello", "parameters": {**GREEDY, "return_full_text": True}})
    assert full.json()[0]["generated_text"] == "Hello" + one[0]["generated_text"]
    # the model may be named by alias or by its source path
    by_path = post(
        api_server,
        {"inputs": "Hello", "parameters": GREEDY},
        model=str(api_server.state.resolve("tiny").source),
    )
    assert by_path.json() == one


def test_temperature_zero_is_greedy(api_server) -> None:
    a = post(
        api_server,
        {
            "inputs": "Hi",
            "parameters": {"temperature": 0, "max_new_tokens": 6},
            "options": {"use_cache": False},
        },
    )
    b = post(
        api_server,
        {
            "inputs": "Hi",
            "parameters": {"do_sample": False, "max_new_tokens": 6},
            "options": {"use_cache": False},
        },
    )
    assert a.json() == b.json()


def test_stop_kept_end_sequence_trimmed(api_server) -> None:
    text = post(api_server, {"inputs": "Hello", "parameters": GREEDY}).json()[0]["generated_text"]
    marker = text[3:6]
    cut = text.index(marker)
    kept = post(api_server, {"inputs": "Hello", "parameters": {**GREEDY, "stop": [marker]}}).json()
    assert kept[0]["generated_text"] == text[: cut + len(marker)]
    trimmed = post(
        api_server, {"inputs": "Hello", "parameters": {**GREEDY, "end_sequence": marker}}
    ).json()
    assert trimmed[0]["generated_text"] == text[:cut]


def test_response_cache_and_headers(api_server) -> None:
    body = {"inputs": "Cache me", "parameters": {**GREEDY, "max_new_tokens": 3}}
    first = post(api_server, body)
    second = post(api_server, body)
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert first.json() == second.json()
    assert first.headers["x-compute-type"] == "cpu"
    assert float(first.headers["x-compute-time"]) > 0
    assert int(first.headers["x-generated-tokens"]) <= 3
    fresh = post(api_server, {**body, "options": {"use_cache": False}})
    assert fresh.headers["x-cache"] == "miss"
    sampled = {"inputs": "Cache me", "parameters": {"max_new_tokens": 3}}  # sampling, no seed
    assert post(api_server, sampled).headers["x-cache"] == "miss"
    assert post(api_server, sampled).headers["x-cache"] == "miss"


def test_prefix_cache_header(api_server) -> None:
    prompt = "A long shared few-shot prefix. " * 12
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 1}, "options": {"use_cache": False}}
    post(api_server, body)
    again = post(api_server, body)
    assert int(again.headers["x-prefix-cache-tokens"]) > 0
    metrics = requests.get(api_server.url + "/metrics").text
    assert 'fewshot_prefix_cache_cached_tokens_total{model="tiny"}' in metrics


def test_stream_option_and_details(api_server) -> None:
    body = {"inputs": "Hello", "parameters": {**GREEDY, "details": True}}
    plain = post(api_server, body).json()[0]
    assert plain["details"]["generated_tokens"] == len(plain["details"]["tokens"])
    r = requests.post(f"{api_server.url}/models/tiny", json={**body, "stream": True})
    events = [line for line in r.text.split("\n\n") if line.startswith("data:")]
    assert r.headers["content-type"].startswith("text/event-stream")
    import json

    last = json.loads(events[-1][len("data:") :])
    assert last["generated_text"] == plain["generated_text"]


def test_body_parsed_as_json_whatever_the_content_type(api_server) -> None:
    body = '{"inputs": "Hello", "parameters": {"max_new_tokens": 2}}'
    for content_type in (None, "application/x-www-form-urlencoded", "text/plain"):
        headers = {"Content-Type": content_type} if content_type else {}
        r = requests.post(f"{api_server.url}/models/tiny", data=body, headers=headers)
        if content_type is None:
            assert "content-type" not in r.request.headers
        assert r.status_code == 200, (content_type, r.text)
