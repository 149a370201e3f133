"""`fewshot serve --replicas 2` on a local Ray instance (one per module: starting Ray costs tens
of seconds): the seed's snippet, huggingface_hub and openai (plain and streaming) through Ray
Serve's proxy; prefix affinity; /info, /metrics; a replica killed mid-run.

Two replicas of the tiny random GPT-Neo, half a Ray CPU and one torch thread each, so both fit
CI's two cores. Deselect with `-m "not ray"`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

ray = pytest.importorskip("ray")

from fewshot.settings import Settings  # noqa: E402

pytestmark = pytest.mark.ray

KEY = "ray-test-secret-key-7f3a"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# a few-shot prefix of several 64-character routing blocks; queries differ after it
PREFIX = "".join(f"Review: the {w} was fine.\nSentiment: positive\n###\n" for w in "abcdefg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, url: str, session_dir: str) -> None:
        self.url = url
        self.session_dir = session_dir

    def post(self, path: str, body: dict[str, Any], **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=AUTH, timeout=120, **kw)

    def info(self) -> dict[str, Any]:
        return requests.get(self.url + "/info", timeout=60).json()


@pytest.fixture(scope="module")
def service(tiny_gpt_neo_dir: Path) -> Iterator[Service]:
    from ray import serve

    from fewshot.serving.launch import serving

    chat = Path(tempfile.mkdtemp(prefix="fewshot-ray-chat-"))
    for f in tiny_gpt_neo_dir.iterdir():
        shutil.copy(f, chat / f.name)
    (chat / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    settings = Settings(
        models=[f"tiny={tiny_gpt_neo_dir}", f"chat={chat}"],
        api_keys=[KEY],
        port=_free_port(),
        replicas=2,
        replica_cpus=0.5,
        threads=1,
        kv_cache_mb=32,
        max_batch_size=8,
        affinity_block_chars=64,
        drain_timeout_s=5,
        cache_dir=Path(tempfile.mkdtemp(prefix="fewshot-ray-cache-")),
    )
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with serving(settings) as url:
            yield Service(url, context.address_info["session_dir"])
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(chat, ignore_errors=True)


def _replica(response: requests.Response) -> str:
    replica = response.headers.get("x-fewshot-replica")
    assert replica, dict(response.headers)
    return replica


def _seed_snippet(url: str) -> dict[str, Any]:
    """The seed blog's snippet (tests/api/test_seed_snippet.py), with our URL and API key."""
    path = Path(__file__).parents[1] / "api" / "test_seed_snippet.py"
    spec = importlib.util.spec_from_file_location("seed_snippet", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.SNIPPET.replace("{URL}", url).replace('API_TOKEN = ""', f'API_TOKEN = "{KEY}"')
    namespace: dict[str, Any] = {"options": {"use_cache": False}}
    exec(code, namespace)
    return namespace


def test_seed_snippet_and_auth(service: Service) -> None:
    ns = _seed_snippet(f"{service.url}/models/tiny")
    assert isinstance(ns["data"], str) and ns["data"].startswith("....")
    err = ns["query"]("Hello", {"top_k": 0, "max_new_tokens": 5})
    assert err.startswith("Error:") and "top_k" in err  # HF's validation list, joined

    response = requests.post(f"{service.url}/models/tiny", json={"inputs": "Hi"}, timeout=60)
    assert response.status_code == 401 and "error" in response.json()  # keys apply unchanged
    ok = service.post("/models/tiny", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    assert ok.status_code == 200 and _replica(ok)
    assert ok.headers["x-prefix-cache-tokens"].isdigit()


def test_huggingface_hub_plain_and_stream(service: Service) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=service.url, token=KEY)
    text = client.text_generation("The quick brown fox", max_new_tokens=6)
    pieces = list(client.text_generation("The quick brown fox", max_new_tokens=6, stream=True))
    assert text and "".join(pieces) == text
    messages = [{"role": "user", "content": "Hi!"}]
    chat = InferenceClient(base_url=service.url, token=KEY)
    out = chat.chat_completion(messages, model="chat", max_tokens=4, temperature=0)
    chunks = list(
        chat.chat_completion(messages, model="chat", max_tokens=4, temperature=0, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == out.choices[0].message.content


def test_openai_plain_and_stream(service: Service) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=KEY, max_retries=0)
    out = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0)
    stream = client.completions.create(
        model="tiny", prompt="Once upon", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == out.choices[0].text
    messages = [{"role": "user", "content": "Say something."}]
    chat = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=4, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="chat", messages=messages, max_tokens=4, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        chat.choices[0].message.content
    )
    with pytest.raises(openai.BadRequestError):  # errors keep the OpenAI format
        client.completions.create(model="tiny", prompt="x", max_tokens=1, temperature=3)


def _generate(service: Service, prompt: str) -> requests.Response:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 2}}
    response = service.post("/generate", body)
    assert response.status_code == 200, response.text
    return response


def test_shared_prefix_sticks_and_hits_the_cache(service: Service) -> None:
    answers = [_generate(service, f"{PREFIX}Review: query {i}\nSentiment:") for i in range(4)]
    assert len({_replica(a) for a in answers}) == 1
    cached = [int(a.headers["x-prefix-cache-tokens"]) for a in answers]
    assert all(c > 0 for c in cached[1:]), cached


def test_distinct_prefixes_spread(service: Service) -> None:
    replicas = {
        _replica(_generate(service, f"Task {i}: {'lorem ipsum ' * 8}{i}\nAnswer:"))
        for i in range(4)
    }
    assert len(replicas) == 2


def test_info_health_metrics(service: Service) -> None:
    info = service.info()
    assert info["model_id"] == "tiny" and len(info["replicas"]) == 2
    assert all(r["pid"] > 0 and r["models"][0]["status"] == "ready" for r in info["replicas"])
    assert requests.get(service.url + "/health", timeout=30).status_code == 200
    page = requests.get(service.url + "/", timeout=30)  # the playground, and its static files
    assert page.status_code == 200 and "<html" in page.text.lower() and _replica(page)
    assert requests.get(service.url + "/static/app.js", timeout=30).status_code == 200
    metrics = requests.get(service.url + "/metrics", timeout=60)
    assert metrics.status_code == 200
    for replica in info["replicas"]:
        assert f'replica="{replica["id"]}"' in metrics.text
    assert "fewshot_requests_total{" in metrics.text
    held = [ln for ln in metrics.text.splitlines() if ln.startswith("fewshot_router_decisions")]
    assert any('reason="held"' in ln and float(ln.split()[-1]) >= 3 for ln in held), held


def _stream_events(response: requests.Response) -> list[dict[str, Any]]:
    return [
        json.loads(line[5:]) for line in response.iter_lines(decode_unicode=True)
        if line and line.startswith("data:")
    ]  # fmt: skip


def test_killed_replica(service: Service) -> None:
    pids = {r["id"]: r["pid"] for r in service.info()["replicas"]}
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 240}}
    with service.post("/generate_stream", body, stream=True) as stream:
        victim = _replica(stream)
        os.kill(pids[victim], signal.SIGKILL)  # the stream has just started
        events = _stream_events(stream)
    assert events[-1]["error_type"] == "generation" and "died" in events[-1]["error"]

    # every later request is answered, the shared prefix's too, until Ray restarted the replica
    for i in range(6):
        _generate(service, f"{PREFIX}Review: after {i}\nSentiment:")
        assert requests.get(service.url + "/health", timeout=30).status_code == 200
    deadline = time.monotonic() + 120
    while True:
        replicas = service.info()["replicas"]
        fresh = [r for r in replicas if "pid" in r and r["pid"] != pids[victim]]
        if len(fresh) == 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(fresh) == 2, replicas  # Ray restarted it


def test_api_keys_never_logged(service: Service) -> None:
    logs = Path(service.session_dir) / "logs"
    assert logs.is_dir()
    for path in logs.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_shutdown_drains_requests_in_flight(service: Service) -> None:
    """Last: deletes the application. A stream already running finishes normally."""
    from ray import serve

    from fewshot.serving.launch import APP_NAME

    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 200}}
    with service.post("/generate_stream", body, stream=True) as stream:
        assert stream.status_code == 200
        deleting = threading.Thread(target=serve.delete, args=(APP_NAME,))
        deleting.start()
        events = _stream_events(stream)
        deleting.join(timeout=60)
    assert "error" not in events[-1] and events[-1]["generated_text"] is not None
