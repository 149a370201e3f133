"""Extreme but valid numbers: every value the validation lets through generates (200), and the
sampler stays numerically safe for them (issue 12, "extreme but representable floats")."""

from __future__ import annotations

import math
from typing import Any

import pytest
import requests
import torch

from fewshot.engine.sampling import Sampler
from fewshot.engine.types import ParameterError, SamplingParams

TINY = 5e-324  # the smallest positive double
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/models/tiny", {"inputs": "a b a b", "parameters": {"max_new_tokens": 3}}),
    ("/generate", {"inputs": "a b a b", "parameters": {"max_new_tokens": 3}}),
    ("/v1/completions", {"prompt": "a b a b", "max_tokens": 3}),
]
EXTREMES: dict[str, list[dict[str, Any]]] = {
    "/models/tiny": [
        {"temperature": TINY},
        {"temperature": 100, "top_k": 2**62},
        {"repetition_penalty": TINY, "do_sample": True},
        {"repetition_penalty": 100, "temperature": 1e-5},
        {"top_p": TINY, "seed": 2**64 - 1},
        {"max_time": 1e-300},
    ],
    "/generate": [
        {"temperature": TINY},
        {"temperature": 1e300},
        {"repetition_penalty": TINY, "do_sample": True},
        {"repetition_penalty": 1e300, "temperature": 0.5},
        {"top_p": TINY, "top_k": 2**62, "do_sample": True},
        {"truncate": 2**62, "top_n_tokens": 5, "details": True},
    ],
    "/v1/completions": [
        {"temperature": 1e-45},
        {"temperature": TINY, "top_p": TINY},
        {"repetition_penalty": TINY, "temperature": 2},
        {"repetition_penalty": 1.7e308, "logprobs": 5},
        {"top_k": 2**62, "seed": 0},
    ],
}


def _case(path: str, body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    if path == "/v1/completions":
        return {**body, **extra}
    return {**body, "parameters": {**body["parameters"], **extra}}


@pytest.mark.parametrize(
    ("path", "extra"), [(path, extra) for path, cases in EXTREMES.items() for extra in cases]
)
def test_extreme_values_generate(api_server, path: str, extra: dict[str, Any]) -> None:
    body = dict(ROUTES)[path]
    response = requests.post(api_server.url + path, json=_case(path, body, extra))
    assert response.status_code == 200, response.text


def test_hf_stream_with_zero_new_tokens(api_server) -> None:
    """The legacy API allows max_new_tokens 0 (TGI does not): its stream path must too."""
    body = {"inputs": "hello", "stream": True, "parameters": {"max_new_tokens": 0}}
    response = requests.post(api_server.url + "/models/tiny", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")


LOGITS = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 8
CONTEXT = list(range(0, 64, 2))  # half the vocabulary is "already seen"


@pytest.mark.parametrize("temperature", [TINY, 1e-45, 1e-5, 1e-4, 0.5, 1.0, 100.0, 1e300])
@pytest.mark.parametrize("penalty", [None, TINY, 1e-30, 1.3, 1e30, 1.7e308])
@pytest.mark.parametrize("top_p", [None, TINY, 0.5])
def test_sampler_is_safe_for_every_valid_value(temperature, penalty, top_p) -> None:
    params = SamplingParams(
        temperature=temperature,
        do_sample=True,
        repetition_penalty=penalty,
        top_p=top_p,
        seed=1,
        top_n_tokens=3,
    ).validate()
    sampler = Sampler(params)
    processed = sampler.process(LOGITS, CONTEXT)
    assert not torch.isnan(processed).any() and not torch.isposinf(processed).any()
    for _ in range(3):
        choice = sampler.choose(LOGITS, CONTEXT)
        assert 0 <= choice.token_id < 64 and math.isfinite(choice.logprob)


def test_tiny_temperature_is_greedy() -> None:
    params = SamplingParams(temperature=1e-30, do_sample=True, seed=3)
    assert params.greedy
    assert Sampler(params).choose(LOGITS, []).token_id == int(torch.argmax(LOGITS))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", math.inf),
        ("temperature", math.nan),
        ("top_p", math.nan),
        ("repetition_penalty", math.inf),
        ("max_time", math.inf),
    ],
)
def test_non_finite_parameters_are_refused(field: str, value: float) -> None:
    with pytest.raises(ParameterError) as err:
        SamplingParams(**{field: value}).validate()
    assert err.value.param == field
