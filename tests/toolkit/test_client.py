"""The HF-format client (sync and async) against a real uvicorn server, errors included.

The server here is a minimal FastAPI app in the test that speaks the Hugging Face Inference API
format (`POST /models/{id}` -> [{"generated_text"}], errors {"error": ...}) and TGI's /generate
with `details.prefill`; its "model" continues every prompt with a fixed text, so the client's
request building and response parsing are checked exactly. test_client_real_server.py runs the
same client against the project's own app.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fewshot import Client
from fewshot.toolkit.backends import RemoteBackend, continuation_logprob
from fewshot.toolkit.client import AsyncClient, FewShotAPIError, error_message, split_model_url
from fewshot.toolkit.prompts import FewShotPrompt

CONTINUATION = " fromage\n###\nEnglish: milk\nFrench: lait"
KNOWN = {
    "max_new_tokens",
    "temperature",
    "do_sample",
    "stop",
    "end_sequence",
    "return_full_text",
    "seed",
}


def hf_app() -> FastAPI:
    app = FastAPI()
    app.state.requests = []

    @app.post("/models/{model_id:path}")
    async def models(model_id: str, request: Request) -> Any:
        body = await request.json()
        app.state.requests.append(
            {"model": model_id, "body": body, "headers": dict(request.headers)}
        )
        if request.headers.get("authorization") != "Bearer secret":
            return JSONResponse(
                {"error": "Authorization header is correct, but the token seems invalid"}, 401
            )
        if model_id != "org/tiny":
            return JSONResponse({"error": f"Model {model_id} does not exist"}, 404)
        params = body.get("parameters") or {}
        unknown = sorted(set(params) - KNOWN)
        if unknown:
            return JSONResponse(
                {"error": [f"The following `model_kwargs` are not used by the model: {unknown}"]},
                400,
            )
        text = CONTINUATION
        stops = params.get("stop") or (
            [params["end_sequence"]] if params.get("end_sequence") else []
        )
        for s in stops:
            if s in text:
                text = text[: text.index(s) + len(s)]  # the match stays in the text, as in TGI
        if params.get("return_full_text", True):
            text = body["inputs"] + text
        return [{"generated_text": text}]

    @app.post("/generate")
    async def generate(request: Request) -> Any:
        body = await request.json()
        pieces = re.findall(r"\s*\S+", body["inputs"])
        prefill = [{"id": 1, "text": "<bos>", "logprob": None}] + [
            {"id": i + 2, "text": p, "logprob": -1.0 if p.strip() == "positive" else -float(len(p))}
            for i, p in enumerate(pieces)
        ]
        return {
            "generated_text": "x",
            "details": {"finish_reason": "length", "generated_tokens": 1, "prefill": prefill},
        }

    return app


@pytest.fixture(scope="module")
def server(serve_app: Any) -> Any:
    app = hf_app()
    with serve_app(app) as url:
        yield url, app


def test_split_model_url() -> None:
    assert split_model_url("http://h:1/") == ("http://h:1", None)
    assert split_model_url("https://api/models/EleutherAI/gpt-neo-2.7B") == (
        "https://api",
        "EleutherAI/gpt-neo-2.7B",
    )


def test_query_mirrors_the_seed(server: Any) -> None:
    url, app = server
    with Client(f"{url}/models/org/tiny", token="secret") as client:
        out = client.query(
            "English: cheese\nFrench:",
            {"max_new_tokens": 25, "temperature": 0.5, "end_sequence": "###"},
        )
    assert out == "English: cheese\nFrench: fromage\n###"
    last = app.state.requests[-1]
    assert last["model"] == "org/tiny"
    assert last["body"]["options"] == {"use_cache": False}
    assert last["body"]["parameters"]["end_sequence"] == "###"
    assert last["headers"]["authorization"] == "Bearer secret"


def test_generate_with_a_fewshot_prompt(server: Any) -> None:
    url, app = server
    prompt = FewShotPrompt(
        description="Translate.",
        examples=[("sea otter", "loutre de mer")],
        format="English: {input}\nFrench: {output}",
        parameters={"max_new_tokens": 8},
    )
    with Client(url, token="secret", model="org/tiny") as client:
        answer = client.generate(prompt, query="cheese", temperature=0)
        raw = client.generate("Say:", stop=["\n"])
    assert answer == "fromage"
    assert raw == " fromage"
    body = app.state.requests[-2]["body"]
    assert body["inputs"] == prompt.render("cheese")
    assert body["parameters"] == {
        "max_new_tokens": 8,
        "stop": ["###"],
        "return_full_text": False,
        "do_sample": False,
    }


def test_end_sequence_style_for_servers_that_want_it(server: Any) -> None:
    url, app = server
    with Client(url, token="secret", model="org/tiny", stop_parameter="end_sequence") as client:
        assert client.generate("x", stop="###") == " fromage\n"
    assert app.state.requests[-1]["body"]["parameters"]["end_sequence"] == "###"


def test_errors_carry_status_and_server_message(server: Any) -> None:
    url, _ = server
    with Client(url, token="secret", model="org/tiny") as client:
        with pytest.raises(FewShotAPIError) as bad:
            client.query("x", {"bogus": 1})
        with pytest.raises(FewShotAPIError) as missing:
            client.query("x", model="nope/none")
    assert bad.value.status == 400 and "model_kwargs" in bad.value.message
    assert missing.value.status == 404 and missing.value.message == "Model nope/none does not exist"
    with (
        Client(url, token="wrong", model="org/tiny") as client,
        pytest.raises(FewShotAPIError) as denied,
    ):
        client.query("x")
    assert denied.value.status == 401 and "token" in denied.value.message


def test_unreachable_server_is_a_typed_error(unused_port: int) -> None:
    with Client(f"http://127.0.0.1:{unused_port}", model="m", timeout=2) as client:
        with pytest.raises(FewShotAPIError) as err:
            client.query("x")
    assert err.value.status is None


def test_async_client_shares_the_protocol(server: Any) -> None:
    url, _ = server

    async def main() -> tuple[str, str, FewShotAPIError]:
        async with AsyncClient(url, token="secret", model="org/tiny") as client:
            a, b = await asyncio.gather(client.query("p: "), client.generate("q", stop="###"))
            try:
                await client.query("x", {"bogus": 1})
            except FewShotAPIError as exc:
                return a, b, exc
        raise AssertionError("no error raised")

    a, b, exc = asyncio.run(main())
    assert a == "p: " + CONTINUATION
    assert b == " fromage\n"
    assert exc.status == 400


def test_remote_backend_scores_continuations_from_prefill(server: Any) -> None:
    url, _ = server
    with Client(url, token="secret", model="org/tiny") as client:
        backend = RemoteBackend(client)
        scores = backend.loglikelihood(
            [("Review: nice\nSentiment:", " positive"), ("Review: nice\nSentiment:", " negative")]
        )
    assert scores == [-1.0, -9.0]


def test_error_message_shapes() -> None:
    assert error_message({"error": ["a", "b"]}, "x") == "a b"
    assert error_message({"error": {"message": "m"}}, "x") == "m"
    assert error_message({"detail": "d"}, "x") == "d"
    assert error_message("", "fallback") == "fallback"
    assert (
        continuation_logprob([{"text": "a", "logprob": -1}, {"text": " b", "logprob": -2}], " b")
        == -2
    )
