"""Limits: request body size (413, declared or streamed), concurrent requests (429 at once, as
TGI), prompt length (from settings)."""

from __future__ import annotations

import time

import httpx
import pytest
import requests
from api_support import make_settings, serve


@pytest.fixture(scope="module")
def limited_server(tiny_gpt_neo_dir):
    settings = make_settings(
        f"tiny={tiny_gpt_neo_dir}",
        max_concurrent_requests=1,
        max_body_bytes=2000,
        max_input_tokens=16,
        max_total_tokens=64,
    )
    with serve(settings) as server:
        yield server


def test_body_too_large(limited_server) -> None:
    big = {"inputs": "x" * 5000}
    r = requests.post(limited_server.url + "/models/tiny", json=big)
    assert r.status_code == 413 and "2000 bytes" in r.json()["error"]
    r = requests.post(limited_server.url + "/v1/completions", json={"prompt": "x" * 5000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 500
        yield b'{"inputs": "x"}'

    r = httpx.post(limited_server.url + "/generate", content=chunks())
    assert r.status_code == 413 and r.json()["error_type"] == "validation"


def test_token_limits(limited_server) -> None:
    r = requests.post(limited_server.url + "/generate", json={"inputs": "word " * 40})
    assert r.status_code == 422 and "16" in r.json()["error"]
    r = requests.post(
        limited_server.url + "/generate",
        json={"inputs": "Hi", "parameters": {"max_new_tokens": 100}},
    )
    assert r.status_code == 422 and "64" in r.json()["error"]
    info = requests.get(limited_server.url + "/info").json()
    assert info["max_input_tokens"] == 16 and info["max_total_tokens"] == 64


def test_overloaded_at_once(limited_server) -> None:
    url = limited_server.url
    slot = (
        limited_server.state.admission.acquire()
    )  # the one slot, as an in-flight request holds it
    try:
        t0 = time.monotonic()
        for path, body in (
            ("/generate", {"inputs": "Hi"}),
            ("/generate_stream", {"inputs": "Hi"}),
            ("/models/tiny", {"inputs": "Hi", "options": {"use_cache": False}}),
            ("/v1/completions", {"prompt": "Hi"}),
        ):
            r = requests.post(url + path, json=body)
            assert r.status_code == 429, r.text
        assert time.monotonic() - t0 < 5  # refused at once, not queued
        assert r.json()["error"]["type"] == "server_overloaded"
        r = requests.post(url + "/generate", json={"inputs": "Hi"})
        assert r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    finally:
        slot.release()
    r = requests.post(url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 200
    assert limited_server.state.admission.active == 0  # the request gave its slot back
