"""The server's own protections: an OpenAPI document whose references resolve, /tokenize that
counts what the input limit counts, typed 500s, slow-client deadlines with a connection limit,
and a graceful shutdown that refuses new work in each route's format."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from api_support import make_settings, serve

from fewshot.api.app import create_app
from fewshot.api.server import Server, uvicorn_config


def _refs(value: Any) -> set[str]:
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.update(v for k, v in item.items() if k == "$ref" and isinstance(v, str))
            stack.extend(v for k, v in item.items() if k != "$ref")
        elif isinstance(item, list):
            stack.extend(item)
    return found


def test_openapi_references_resolve(api_server) -> None:
    doc = requests.get(api_server.url + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    refs = _refs(doc)
    assert refs and "$defs" not in json.dumps(doc)
    prefix = "#/components/schemas/"
    assert all(r.startswith(prefix) and r[len(prefix) :] in schemas for r in refs), refs
    stream = doc["paths"]["/generate_stream"]["post"]["responses"]["200"]["content"]
    assert stream["text/event-stream"]["schema"] == {"$ref": prefix + "StreamResponse"}


@pytest.fixture(scope="module")
def bos_server(tiny_gpt_neo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny model with a tokenizer that prepends BOS, and an 8-token input limit."""
    path = tmp_path_factory.mktemp("tiny-bos")
    for f in tiny_gpt_neo_dir.iterdir():
        shutil.copy(f, path / f.name)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    with serve(make_settings(f"bos={path}", max_input_tokens=8)) as server:
        yield server


def test_tokenize_counts_what_the_input_limit_counts(bos_server) -> None:
    url = bos_server.url
    tokens = requests.post(url + "/tokenize", json={"inputs": "one two three four five six"})
    assert tokens.status_code == 200, tokens.text
    first, *rest = tokens.json()
    assert first == {"id": 50256, "text": "", "start": 0, "stop": 0}
    assert len(rest) == 6  # 7 with BOS: within the limit of 8
    seven = {"inputs": "one two three four five six seven", "parameters": {"max_new_tokens": 1}}
    eight = {**seven, "inputs": seven["inputs"] + " eight"}
    assert len(requests.post(url + "/tokenize", json=eight).json()) == 9
    assert requests.post(url + "/generate", json=seven).status_code == 200
    over = requests.post(url + "/generate", json=eight)
    assert over.status_code == 422 and "Given: 9" in over.json()["error"]


def test_unexpected_errors_are_typed_internal() -> None:
    from fewshot.api.errors import ApiError, GenerationFailed

    assert ApiError("boom").tgi_body()["error_type"] == "internal"
    assert GenerationFailed("boom").tgi_body()["error_type"] == "generation"


# --- slow clients ------------------------------------------------------------------------------


def _run(app: Any, settings: Any) -> tuple[Server, threading.Thread, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
    server = Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def guarded(tiny_gpt_neo_dir: Path) -> Any:
    """A server as `fewshot serve` configures it, with short deadlines."""
    settings = make_settings(
        f"tiny={tiny_gpt_neo_dir}",
        header_read_timeout_s=1.0,
        body_read_timeout_s=1.0,
        max_connections=400,
    )
    app = create_app(settings)
    server, thread, url = _run(app, settings)
    deadline = time.monotonic() + 60
    while requests.get(url + "/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_slow_header_connections_do_not_stop_a_normal_client(guarded: str) -> None:
    port = _port(guarded)
    slow = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        slow.append(s)
    try:
        body = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}
        response = requests.post(guarded + "/generate", json=body, timeout=30)
        assert response.status_code == 200, response.text
        # past the header deadline the server has closed every slow connection
        for s in slow:
            s.settimeout(10)
            assert s.recv(1024) == b""
    finally:
        for s in slow:
            s.close()


def test_slow_body_is_a_408_in_the_route_format(guarded: str) -> None:
    with socket.create_connection(("127.0.0.1", _port(guarded)), timeout=10) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
        reply = b""
        while b"}}" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_connection_limit_is_configured(tiny_gpt_neo_dir: Path) -> None:
    settings = make_settings(f"tiny={tiny_gpt_neo_dir}", max_connections=7)
    config = uvicorn_config(object(), settings)
    assert config.limit_concurrency == 7
    assert config.timeout_keep_alive == settings.keep_alive_timeout_s
    assert config.timeout_graceful_shutdown == settings.shutdown_timeout_s


# --- graceful shutdown -------------------------------------------------------------------------

REFUSALS = [
    ("/models/tiny", {"inputs": "x"}, lambda b: "shutting down" in b["error"]),
    ("/generate", {"inputs": "x"}, lambda b: b["error_type"] == "shutting_down"),
    ("/generate_stream", {"inputs": "x"}, lambda b: b["error_type"] == "shutting_down"),
    ("/tokenize", {"inputs": "x"}, lambda b: b["error_type"] == "shutting_down"),
    ("/v1/completions", {"prompt": "x"}, lambda b: b["error"]["code"] == "shutting_down"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}]},
        lambda b: b["error"]["code"] == "shutting_down",
    ),
    ("/tasks/any/predict", {"inputs": "x"}, lambda b: b["error_type"] == "shutting_down"),
]


def test_shutdown_lets_in_flight_finish_and_refuses_new_work(tiny_gpt_neo_dir: Path) -> None:
    settings = make_settings(f"tiny={tiny_gpt_neo_dir}", shutdown_timeout_s=30)
    app = create_app(settings)
    server, thread, url = _run(app, settings)
    state = app.state.fewshot
    while any(m.status == "loading" for m in state.models):
        time.sleep(0.02)
    session = requests.Session()
    stream = session.post(
        url + "/generate_stream",
        json={"inputs": "a long one", "parameters": {"max_new_tokens": 40}},
        stream=True,
    )
    lines = stream.iter_lines()
    assert next(lines).startswith(b"data:")  # in flight
    state.begin_drain()  # what the server's shutdown does first
    other = requests.Session()
    for path, body, check in REFUSALS:
        refused = other.post(url + path, json=body)
        assert refused.status_code == 503 and check(refused.json()), (path, refused.text)
    assert other.get(url + "/health").status_code == 503
    server.should_exit = True
    events = [json.loads(line[5:]) for line in lines if line.startswith(b"data:")]
    assert events[-1]["generated_text"] is not None  # the in-flight stream completed
    thread.join(timeout=30)
    assert not thread.is_alive() and state.admission.active == 0
