"""HTTP client side of the workloads: one request over either wire format, and a concurrent
driver that sends a list of requests from N client threads and times each one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests


@dataclass
class Reply:
    """One finished request: latency, generated text, and (TGI details) token count/reason."""

    latency: float
    text: str
    generated_tokens: int | None = None
    finish_reason: str | None = None


_local = threading.local()


def _session() -> requests.Session:
    sess = getattr(_local, "session", None)
    if sess is None:
        sess = requests.Session()
        _local.session = sess
    return sess


def hf_request(
    base_url: str,
    model_id: str,
    inputs: str,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    timeout: float = 600.0,
) -> Reply:
    """POST /models/{id} (Hugging Face Inference API format), greedy, response cache off."""
    params: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "temperature": 0,
        "do_sample": False,
        "return_full_text": False,
    }
    if stop:
        params["stop"] = list(stop)
    body = {"inputs": inputs, "parameters": params, "options": {"use_cache": False}}
    t0 = time.perf_counter()
    resp = _session().post(f"{base_url}/models/{model_id}", json=body, timeout=timeout)
    latency = time.perf_counter() - t0
    resp.raise_for_status()
    data = resp.json()
    item = data[0] if isinstance(data, list) else data
    return Reply(latency=latency, text=str(item.get("generated_text", "")))


def tgi_request(
    base_url: str,
    inputs: str,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    timeout: float = 600.0,
) -> Reply:
    """POST /generate (TGI format) with details, greedy, so the generated tokens are counted."""
    params: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "details": True}
    if stop:
        params["stop"] = list(stop)
    t0 = time.perf_counter()
    resp = _session().post(
        f"{base_url}/generate", json={"inputs": inputs, "parameters": params}, timeout=timeout
    )
    latency = time.perf_counter() - t0
    resp.raise_for_status()
    data = resp.json()
    details = data.get("details") or {}
    return Reply(
        latency=latency,
        text=str(data.get("generated_text", "")),
        generated_tokens=details.get("generated_tokens"),
        finish_reason=details.get("finish_reason"),
    )


def run_concurrent(
    send: Callable[[str], Reply], prompts: Sequence[str], concurrency: int
) -> tuple[list[Reply], float]:
    """Send every prompt with `concurrency` client threads; return replies and wall time."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        replies = list(pool.map(send, prompts))
    return replies, time.perf_counter() - t0


def run_closed_loop(
    send: Callable[[str], Reply], prompts: Sequence[str], concurrency: int, time_cap_s: float
) -> tuple[list[Reply], float]:
    """`concurrency` clients, each sending the next prompt as soon as its previous reply
    arrives, until the prompts run out; after `time_cap_s` no client starts another request
    (every client still sends its first one). Return the replies and the wall time."""
    lock = threading.Lock()
    pending = iter(prompts)
    t0 = time.perf_counter()
    deadline = t0 + time_cap_s

    def client() -> list[Reply]:
        done: list[Reply] = []
        while True:
            with lock:
                prompt = None if done and time.perf_counter() >= deadline else next(pending, None)
            if prompt is None:
                return done
            done.append(send(prompt))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(client) for _ in range(concurrency)]
        replies = [reply for f in futures for reply in f.result()]
    return replies, time.perf_counter() - t0


def wait_http(base_url: str, path: str, timeout: float, alive: Callable[[], bool]) -> bool:
    """Poll until the server answers `path` (any status below 500) or `alive()` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            if requests.get(f"{base_url}{path}", timeout=5).status_code < 500:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False


def round_trip(base_url: str, path: str, repeats: int = 20) -> float:
    """Median seconds of a trivial GET: the HTTP overhead included in every timing."""
    times = []
    sess = _session()
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.get(f"{base_url}{path}", timeout=10)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def engine_gauge(base_url: str, name: str) -> float | None:
    """Our server's `fewshot_engine_<name>` gauge from /metrics (its first sample), or None
    where the server has no such metric (the baseline, a peer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        reply = requests.get(f"{base_url}/metrics", timeout=10)
    except requests.RequestException:
        return None
    if reply.status_code != 200:
        return None
    for family in text_string_to_metric_families(reply.text):
        if family.name == f"fewshot_engine_{name}" and family.samples:
            return float(family.samples[0].value)
    return None
