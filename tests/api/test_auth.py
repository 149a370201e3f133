"""API keys: off (any or no token passes) and on (Bearer required on inference routes, 401 in
each route's format; health, info and metrics stay open)."""

from __future__ import annotations

import openai
import pytest
import requests
from api_support import make_settings, serve
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def auth_server(tiny_gpt_neo_dir, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("other-key\n\n")
    settings = make_settings(f"tiny={tiny_gpt_neo_dir}", api_keys=[KEY], api_key_file=key_file)
    with serve(settings) as server:
        yield server


ROUTES = [
    ("/models/tiny", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, "hf"),
    ("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, "tgi"),
    ("/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, "tgi"),
    ("/", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, "tgi"),
    ("/tokenize", {"inputs": "Hi"}, "tgi"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 2}, "openai"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        "openai",
    ),
]


@pytest.mark.parametrize(("path", "body", "fmt"), ROUTES)
def test_auth_required(auth_server, path, body, fmt) -> None:
    url = auth_server.url + path
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        r = requests.post(url, json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        err = r.json()["error"]
        if fmt == "openai":
            assert err["code"] == "invalid_api_key"
        else:
            assert isinstance(err, str)
        if fmt == "tgi":
            assert r.json()["error_type"] == "unauthorized"
        assert KEY not in r.text
    for key in (KEY, "other-key"):  # --api-key and --api-key-file
        ok = requests.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200, ok.text


def test_open_routes(auth_server) -> None:
    for path in ("/health", "/info", "/metrics", "/openapi.json"):
        assert requests.get(auth_server.url + path).status_code == 200, path
    assert requests.get(auth_server.url + "/v1/models").status_code == 401


def test_clients_send_the_token(auth_server) -> None:
    good = InferenceClient(model=auth_server.url, token=KEY)
    assert isinstance(good.text_generation("Hi", max_new_tokens=2), str)
    # TGI-format 401: huggingface_hub raises its text-generation error, from the HTTP error
    with pytest.raises(Exception, match="Invalid credentials") as info:
        InferenceClient(model=auth_server.url, token="wrong").text_generation(
            "Hi", max_new_tokens=2
        )
    cause = info.value.__cause__
    assert isinstance(cause, HfHubHTTPError) and cause.response.status_code == 401

    ok = openai.OpenAI(base_url=auth_server.url + "/v1", api_key=KEY, max_retries=0)
    assert ok.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices
    bad = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="tiny", prompt="Hi", max_tokens=2)


def test_auth_off_accepts_any_token(api_server) -> None:
    client = InferenceClient(model=api_server.url, token="hf_whatever")
    assert isinstance(client.text_generation("Hi", max_new_tokens=2), str)
    r = requests.post(
        api_server.url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
    )
    assert r.status_code == 200


def test_key_comparison() -> None:
    from fewshot.api.auth import key_matches

    keys = [b"alpha", b"beta"]
    assert key_matches("beta", keys) and not key_matches("bet", keys) and not key_matches("", keys)
