"""huggingface_hub.InferenceClient against the server: text_generation (plain, details, stream)
and chat_completion (plain, stream)."""

from __future__ import annotations

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError


def test_text_generation_plain_details_stream(api_server) -> None:
    client = InferenceClient(model=api_server.url, token="ignored-when-auth-is-off")
    text = client.text_generation("The quick brown fox", max_new_tokens=6)
    assert isinstance(text, str) and text

    out = client.text_generation("The quick brown fox", max_new_tokens=6, details=True)
    assert out.generated_text == text  # `parameters` present: greedy, as TGI
    assert out.details.generated_tokens == len(out.details.tokens) <= 6
    assert out.details.finish_reason in ("length", "eos_token", "stop_sequence")
    assert all(t.logprob <= 0 for t in out.details.tokens)

    pieces = list(client.text_generation("The quick brown fox", max_new_tokens=6, stream=True))
    assert "".join(pieces) == text

    events = list(
        client.text_generation("The quick brown fox", max_new_tokens=6, stream=True, details=True)
    )
    assert events[-1].generated_text == text
    assert events[-1].details.generated_tokens == len(events)


def test_text_generation_validation_error(api_server) -> None:
    client = InferenceClient(model=api_server.url)
    with pytest.raises(ValidationError):
        client.text_generation("Hello", max_new_tokens=5, top_p=1.5)


def test_chat_completion(api_server) -> None:
    client = InferenceClient(base_url=api_server.url)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    out = client.chat_completion(messages, model="chat", max_tokens=5, temperature=0)
    content = out.choices[0].message.content
    assert isinstance(content, str) and out.usage.completion_tokens <= 5
    assert out.choices[0].finish_reason in ("stop", "length")

    chunks = list(
        client.chat_completion(messages, model="chat", max_tokens=5, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content


def test_chat_completion_default_model(api_server) -> None:
    # a client given only a URL sends model="dummy": the default model answers
    client = InferenceClient(model=api_server.url)
    out = client.chat_completion([{"role": "user", "content": "Hello"}], max_tokens=3)
    assert out.model == "tiny"
