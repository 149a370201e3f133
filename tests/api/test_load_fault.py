"""The load-and-fault suite: a real `fewshot serve` process over the tiny model, attacked as
a hostile user would. CI runs the short default (16 clients x 3 requests each); the README's
figures come from `pytest tests/api/test_load_fault.py --load-clients 64 --load-requests 10`.

- N concurrent clients over every route: every answer a well-formed 200, none lost, and the
  in-flight gauge back to 0.
- Dropped streams: clients that hang up mid-stream free their slots (gauge back to 0,
  counted as cancelled).
- kill -9 during generation and during task writes, then a restart on the same directories:
  the server serves again and every stored task reads back.
- SIGTERM with a request in flight: it finishes (200), new requests are refused, exit code 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.load

MSG = [{"role": "user", "content": "hi"}]


class ServeProcess:
    """`fewshot serve` in a subprocess on a free port, with its cache (and tasks) in `cache`."""

    def __init__(self, model_dir: Path, cache: Path, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "FEWSHOT_SHUTDOWN_TIMEOUT_S": "30",
            "FEWSHOT_MAX_CONNECTIONS": "2048",
        }
        argv = [
            sys.executable,
            "-c",
            "from fewshot.cli import main; raise SystemExit(main())",
            "serve",
            "--model",
            f"tiny={model_dir}",
            "--port",
            str(self.port),
            "--cache-dir",
            str(cache),
            "--threads",
            "1",
            "--max-concurrent-requests",
            "1024",
            "--log-level",
            "warning",
        ]
        self.log = log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the server exited while starting"
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the server did not become healthy")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def gauge(self, name: str) -> float:
        text = requests.get(self.url + "/metrics", timeout=10).text
        match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


class Cluster:
    """Servers over one cache directory, one at a time: `current`, and `restart()` after a
    kill. Module-scoped: two process starts in all, to keep CI short (the module's last test
    kills the first server and restarts)."""

    def __init__(self, model_dir: Path, root: Path) -> None:
        self.model_dir, self.root = model_dir, root
        self.servers: list[ServeProcess] = []
        self.restart()

    @property
    def current(self) -> ServeProcess:
        return self.servers[-1]

    def restart(self) -> ServeProcess:
        server = ServeProcess(self.model_dir, self.root / "cache", self.root / "serve.log")
        self.servers.append(server)
        server.wait_ready()
        return server


@pytest.fixture(scope="module")
def cluster(tiny_gpt_neo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tiny_gpt_neo_dir, tmp_path_factory.mktemp("load-fault"))
    yield cluster
    for server in cluster.servers:
        server.kill()


def _sse(text: str) -> list[Any]:
    return [
        json.loads(line[5:])
        for line in text.splitlines()
        if line.startswith("data:") and line.strip() != "data: [DONE]"
    ]


# (method, path, body, check of a 200 answer)
CALLS: list[tuple[str, str, Any, Callable[[requests.Response], bool]]] = [
    (
        "POST",
        "/models/tiny",
        {"inputs": "hello", "parameters": {"max_new_tokens": 3}},
        lambda r: "generated_text" in r.json()[0],
    ),
    (
        "POST",
        "/generate",
        {"inputs": "hello", "parameters": {"max_new_tokens": 3, "details": True}},
        lambda r: r.json()["details"]["generated_tokens"] == 3,
    ),
    (
        "POST",
        "/generate_stream",
        {"inputs": "hello", "parameters": {"max_new_tokens": 3}},
        lambda r: _sse(r.text)[-1]["generated_text"] is not None,
    ),
    ("POST", "/", {"inputs": "hello", "parameters": {"max_new_tokens": 2}}, lambda r: r.json()),
    ("POST", "/tokenize", {"inputs": "hello world"}, lambda r: len(r.json()) == 2),
    (
        "POST",
        "/v1/completions",
        {"prompt": "hello", "max_tokens": 3, "n": 2},
        lambda r: len(r.json()["choices"]) == 2,
    ),
    (
        "POST",
        "/v1/completions",
        {"prompt": "hello", "max_tokens": 3, "stream": True},
        lambda r: r.text.rstrip().endswith("data: [DONE]"),
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": MSG, "max_tokens": 3},
        lambda r: r.json()["choices"][0]["message"]["role"] == "assistant",
    ),
    ("GET", "/v1/models", None, lambda r: r.json()["data"][0]["id"] == "tiny"),
    ("GET", "/info", None, lambda r: r.json()["model_id"] == "tiny"),
    ("GET", "/tasks", None, lambda r: "tasks" in r.json()),
]


def test_concurrent_clients_over_all_routes(cluster, request: pytest.FixtureRequest) -> None:
    clients = request.config.getoption("--load-clients")
    per_client = request.config.getoption("--load-requests")
    server = cluster.current

    def client(c: int) -> tuple[int, list[str]]:
        http, ok, problems = requests.Session(), 0, []
        for i in range(per_client):
            method, path, body, check = CALLS[(c + i) % len(CALLS)]
            try:
                r = http.request(method, server.url + path, json=body, timeout=120)
                if r.status_code == 200 and check(r):
                    ok += 1
                else:
                    problems.append(f"{path}: {r.status_code} {r.text[:200]}")
            except Exception as exc:  # a lost request
                problems.append(f"{path}: {type(exc).__name__}: {exc}")
        return ok, problems

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(client, range(clients)))
    elapsed = time.monotonic() - t0
    problems = [p for _, ps in outcomes for p in ps]
    served = sum(ok for ok, _ in outcomes)
    print(
        f"\nload: {clients} clients x {per_client} requests: {served} ok, "
        f"{len(problems)} lost or malformed, {elapsed:.1f}s"
    )
    assert not problems, problems[:5]
    assert served == clients * per_client
    assert server.gauge("fewshot_inflight_requests") == 0


def test_dropped_streams_free_their_slots(cluster) -> None:
    server = cluster.current
    dropped = 8
    before = server.gauge("fewshot_requests_cancelled_total")
    for _ in range(dropped):
        body = {"inputs": "a long story", "parameters": {"max_new_tokens": 200}}
        r = requests.post(server.url + "/generate_stream", json=body, stream=True, timeout=60)
        assert next(r.iter_lines()).startswith(b"data:")
        r.close()  # hang up mid-stream
    deadline = time.monotonic() + 30
    while server.gauge("fewshot_inflight_requests") != 0:
        assert time.monotonic() < deadline, "dropped streams still hold their slots"
        time.sleep(0.1)
    assert server.gauge("fewshot_requests_cancelled_total") - before == dropped
    ok = requests.post(server.url + "/generate", json={"inputs": "still", "parameters": {}})
    assert ok.status_code == 200


def test_kill_during_generation_and_task_writes_then_restart(cluster) -> None:
    server = cluster.current
    examples = [{"text": t, "label": t[0]} for t in ("apple", "avocado", "banana", "blueberry")]
    stored = {"name": "kept", "examples": examples, "cross_validate": False}
    assert requests.post(server.url + "/tasks", json=stored, timeout=300).status_code == 201

    stop = threading.Event()

    def hammer(i: int) -> None:  # generations and task writes in flight until the kill
        http = requests.Session()
        n = 0
        while not stop.is_set() and n < 200:
            n += 1
            try:
                if i % 2:
                    body = {"name": f"t{i}-{n}", "examples": examples, "cross_validate": False}
                    http.post(server.url + "/tasks", json=body, timeout=30)
                else:
                    long = {"inputs": "once upon", "parameters": {"max_new_tokens": 100}}
                    http.post(server.url + "/generate", json=long, timeout=30)
            except requests.RequestException:
                return

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while server.gauge("fewshot_inflight_requests") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # generations are in flight
    time.sleep(0.5)  # and some task writes have happened
    server.kill()
    stop.set()
    for t in threads:
        t.join(timeout=60)

    restarted = cluster.restart()
    tasks = requests.get(restarted.url + "/tasks").json()["tasks"]
    names = {t["name"] for t in tasks}
    assert "kept" in names
    for name in names:
        assert requests.get(f"{restarted.url}/tasks/{name}").status_code == 200
    predict = requests.post(restarted.url + "/tasks/kept/predict", json={"inputs": "apricot"})
    assert predict.status_code == 200 and predict.json()["predictions"][0]["label"] in "ab"
    body = {"inputs": "after the crash", "parameters": {"max_new_tokens": 3}}
    assert requests.post(restarted.url + "/generate", json=body).status_code == 200


def test_sigterm_finishes_in_flight_requests_and_exits_0(cluster) -> None:
    server = cluster.current  # the restarted server: this test runs last
    body = {"inputs": "a long one", "parameters": {"max_new_tokens": 150}}
    stream = requests.post(server.url + "/generate_stream", json=body, stream=True, timeout=60)
    lines = stream.iter_lines()
    assert next(lines).startswith(b"data:")  # in flight
    server.proc.send_signal(signal.SIGTERM)
    events = [json.loads(line[5:]) for line in lines if line.startswith(b"data:")]
    assert events[-1]["generated_text"] is not None  # finished, not cut
    assert server.proc.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.post(server.url + "/generate", json=body, timeout=5)
