"""The openai package against /v1: completions and chat, plain and streaming."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI


@pytest.fixture(scope="module")
def client(api_server) -> OpenAI:
    return OpenAI(base_url=f"{api_server.url}/v1", api_key="unused", max_retries=0)


def test_completions_plain_and_stream(client: OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0
    )
    text = out.choices[0].text
    assert out.object == "text_completion" and out.usage.completion_tokens <= 6
    stream = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == text


def test_completions_n_list_logprobs_echo(client: OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt=["One", "Two"], max_tokens=3, n=2, temperature=0.8, seed=3, logprobs=2
    )
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) <= 3
    assert all(len(t) >= 2 for t in lp.top_logprobs)

    echo = client.completions.create(
        model="tiny", prompt="Hello world", max_tokens=0, echo=True, logprobs=1
    )
    choice = echo.choices[0]
    assert choice.text == "Hello world"
    assert choice.logprobs.token_logprobs[0] is None
    assert all(x < 0 for x in choice.logprobs.token_logprobs[1:])


def test_completions_stop_is_trimmed(client: OpenAI) -> None:
    base = client.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0)
    text = base.choices[0].text
    stop = text[len(text) // 2 :][:3]
    if not stop.strip():
        pytest.skip("no usable stop string in this generation")
    out = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=8, temperature=0, stop=[stop]
    )
    assert out.choices[0].text == text[: text.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_chat_plain_and_stream_with_usage(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Say something."}]
    out = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=5, temperature=0
    )
    content = out.choices[0].message.content
    assert out.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=messages,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == out.usage.total_tokens


def test_models_and_errors(client: OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {"tiny", "chat"}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", max_tokens=1, temperature=3)
    assert info.value.body["param"] == "temperature"
