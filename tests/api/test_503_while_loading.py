"""A model still loading: 503 {"error": "Model X is currently loading", "estimated_time"} at
once (in each route's format), /health 503; `wait_for_model` waits until it is ready."""

from __future__ import annotations

import gc
import threading
import time

import requests
from api_support import from_model_loader, make_settings, serve


def test_503_while_loading_then_wait_for_model(tiny_gpt_neo_dir) -> None:
    release = threading.Event()

    def blocked_loader(source, settings):
        assert release.wait(60), "the test never released the loader"
        return from_model_loader(source, settings)

    settings = make_settings(f"tiny={tiny_gpt_neo_dir}")
    gc.unfreeze()
    with serve(settings, loader=blocked_loader, ready=False) as server:
        url = server.url
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
        t0 = time.monotonic()
        r = requests.post(url + "/models/tiny", json=body)
        assert time.monotonic() - t0 < 5
        assert r.status_code == 503
        assert r.json()["error"] == "Model tiny is currently loading"
        assert r.json()["estimated_time"] > 0
        assert int(r.headers["retry-after"]) >= 1

        r = requests.post(url + "/generate", json=body)
        assert r.status_code == 503 and r.json()["error_type"] == "loading"
        r = requests.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        health = requests.get(url + "/health")
        assert health.status_code == 503 and health.json()["error"] == "unhealthy"
        loading = requests.get(url + "/info").json()["models"][0]
        assert loading["status"] == "loading" and loading["backend"] is None

        answers: list[requests.Response] = []
        waiting = threading.Thread(
            target=lambda: answers.append(
                requests.post(
                    url + "/models/tiny", json={**body, "options": {"wait_for_model": True}}
                )
            )
        )
        waiting.start()
        time.sleep(0.5)
        assert not answers  # still waiting for the model
        release.set()
        waiting.join(60)
        assert answers and answers[0].status_code == 200, answers
        assert answers[0].json()[0]["generated_text"].startswith("Hello")
        assert requests.get(url + "/health").status_code == 200
        # the loaded model and everything before it are out of the collector's full passes
        assert gc.get_freeze_count() > 0


def test_failed_load_is_reported(tmp_path) -> None:
    settings = make_settings(f"broken={tmp_path / 'missing'}")

    def failing_loader(source, settings):
        raise FileNotFoundError(source)

    with serve(settings, loader=failing_loader, ready=False) as server:
        deadline = time.monotonic() + 10
        while server.state.models[0].status == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        r = requests.post(server.url + "/models/broken", json={"inputs": "x"})
        assert r.status_code == 503 and "not available" in r.json()["error"]
        assert requests.get(server.url + "/health").status_code == 503
