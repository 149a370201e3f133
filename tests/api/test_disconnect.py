"""A streaming client that goes away cancels its generation in the engine."""

from __future__ import annotations

import time

import requests


def _cancelled(server, model: str) -> float:
    return server.state.metrics.cancelled.labels(model)._value.get()


def test_disconnect_cancels_generation(api_server) -> None:
    llm = api_server.state.resolve("tiny").llm
    before_cancelled = _cancelled(api_server, "tiny")
    before_tokens = llm.stats()["generated_tokens"]
    body = {"inputs": "Count with me:", "parameters": {"max_new_tokens": 240}}
    with requests.post(api_server.url + "/generate_stream", json=body, stream=True) as r:
        lines = r.iter_lines()
        assert next(lines).startswith(b"data:")
    # the connection is closed here, long before 240 tokens
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = llm.stats()
        if stats["running_requests"] == 0 and _cancelled(api_server, "tiny") > before_cancelled:
            break
        time.sleep(0.02)
    assert _cancelled(api_server, "tiny") == before_cancelled + 1
    assert llm.stats()["running_requests"] == 0
    time.sleep(0.3)
    assert llm.stats()["generated_tokens"] - before_tokens < 240
    assert api_server.state.admission.active == 0
