"""Continuous batching behaviour: seeds inside a batch, n > 1, cancellation, max_time, failures,
asyncio handles, prompt logprobs."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from engine_helpers import random_ids

from fewshot.engine.config import EngineConfig
from fewshot.engine.core import Engine
from fewshot.engine.llm import LLM
from fewshot.engine.types import GenerationError, ParameterError, SamplingParams
from fewshot.models.base import CausalLM
from fewshot.models.standalone import new_cache, run

SAMPLED = SamplingParams(max_new_tokens=10, do_sample=True, temperature=0.9, top_k=40, seed=11)


def test_seeded_request_is_identical_inside_a_batch(llm) -> None:
    prompt = random_ids(20, seed=1)
    alone = llm.generate(prompt, SAMPLED).token_ids
    others = [
        llm.submit(
            random_ids(15 + i, seed=2 + i), SamplingParams(max_new_tokens=10, do_sample=True)
        )
        for i in range(3)
    ]
    mine = llm.submit(prompt, SAMPLED)
    assert mine.wait()[0].token_ids == alone
    assert all(len(h.wait()[0].token_ids) > 0 for h in others)


def test_n_sequences_share_the_prompt_and_follow_their_seeds(llm) -> None:
    prompt = random_ids(30, seed=3)
    params = SamplingParams(max_new_tokens=8, do_sample=True, seed=100, n=3)
    results = llm.generate_many(prompt, params)
    assert [r.seed for r in results] == [100, 101, 102]
    assert len({tuple(r.token_ids) for r in results}) > 1
    single = llm.generate(prompt, params, n=1, seed=101)
    assert single.token_ids == results[1].token_ids
    assert llm.generate_many(prompt, params)[2].token_ids == results[2].token_ids


def test_unseeded_sampling_reports_a_replayable_seed(llm) -> None:
    prompt = random_ids(12, seed=4)
    first = llm.generate(prompt, max_new_tokens=6, do_sample=True)
    assert first.seed is not None
    again = llm.generate(prompt, max_new_tokens=6, do_sample=True, seed=first.seed)
    assert again.token_ids == first.token_ids


def test_cancellation_frees_the_sequence_at_once(neo, gpt2_tokenizer) -> None:
    engine = Engine(neo, gpt2_tokenizer, EngineConfig(threads=1), start=False)
    handle = engine.submit(random_ids(10, seed=5), SamplingParams(max_new_tokens=500), loop=None)
    for _ in range(3):
        engine.step()
    stats = engine.stats()
    assert stats["running_requests"] == 1 and stats["kv_cache"]["blocks_used"] == 1
    handle.cancel()
    engine.step()
    stats = engine.stats()
    assert stats["running_requests"] == 0 and stats["kv_cache"]["blocks_used"] == 0
    (result,) = handle.wait()
    assert result.finish_reason == "aborted" and len(result.token_ids) == 3  # prefill + 2 decodes
    engine.close()


def test_stream_closed_early_cancels(llm) -> None:
    stream = llm.stream(random_ids(10, seed=6), max_new_tokens=900)
    next(stream)
    stream.close()
    deadline = time.monotonic() + 10
    while llm.stats()["running_requests"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert llm.stats()["running_requests"] == 0


def test_max_time_stops(llm) -> None:
    result = llm.generate(random_ids(10, seed=7), max_new_tokens=1000, max_time=0.2)
    assert result.finish_reason == "time"
    assert 0 < len(result.token_ids) < 1000
    assert result.total_time < 5


def test_generation_stops_at_the_last_position(llm) -> None:
    prompt = random_ids(llm.max_positions - 3, seed=8)
    result = llm.generate(prompt, max_new_tokens=50, ignore_eos=True)
    assert result.finish_reason == "length" and len(result.token_ids) == 3


class Poisoned(CausalLM):
    """The tiny model, except that a forward containing POISON raises."""

    POISON = 666

    def __init__(self, inner: CausalLM) -> None:
        super().__init__()
        self.inner = inner
        self.spec = inner.spec

    def forward(self, input_ids, positions, attn, logits_indices):
        if bool((input_ids == self.POISON).any()):
            raise RuntimeError("poisoned input")
        return self.inner(input_ids, positions, attn, logits_indices)


def test_a_failing_request_fails_alone(neo, gpt2_tokenizer) -> None:
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    good = [random_ids(12, seed=9), random_ids(25, seed=10)]
    with LLM.from_model(neo, gpt2_tokenizer, threads=1) as plain:
        expected = [plain.generate(p, params).token_ids for p in good]
    with LLM.from_model(Poisoned(neo), gpt2_tokenizer, threads=1) as engine_llm:
        first = engine_llm.submit(good[0], params)
        bad = engine_llm.submit(random_ids(5, seed=11) + [Poisoned.POISON], params)
        second = engine_llm.submit(good[1], params)
        with pytest.raises(GenerationError, match="poisoned"):
            bad.wait()
        assert [first.wait()[0].token_ids, second.wait()[0].token_ids] == expected
        assert engine_llm.generate(good[0], params).token_ids == expected[0]
        assert engine_llm.stats()["failed"] == 1


def test_async_handles(llm) -> None:
    prompts = [random_ids(10 + i, seed=20 + i) for i in range(3)]
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    expected = [llm.generate(p, params).token_ids for p in prompts]

    async def one(prompt: list[int]) -> tuple[list[int], list[int]]:
        handle = llm.submit(prompt, params)  # bound to the running loop
        streamed = [ev.token.id async for ev in handle if ev.token is not None]
        return streamed, (await handle.results())[0].token_ids

    async def main() -> list[tuple[list[int], list[int]]]:
        return await asyncio.gather(*(one(p) for p in prompts))

    for (streamed, final), exp in zip(asyncio.run(main()), expected, strict=True):
        assert streamed == final == exp


def test_prompt_logprobs_match_a_full_forward(llm, neo) -> None:
    prompt = random_ids(40, seed=30)
    result = llm.generate(prompt, max_new_tokens=1, prompt_logprobs=True, top_n_tokens=2)
    with torch.inference_mode():
        logits = run(neo, torch.tensor(prompt), [new_cache(neo)], [len(prompt)], logits="all")
    ref = torch.log_softmax(logits, -1)[torch.arange(39), torch.tensor(prompt[1:])]
    assert result.prefill is not None and result.prefill[0].logprob is None
    got = torch.tensor([t.logprob for t in result.prefill[1:]])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert all(len(t.top) == 2 for t in result.prefill[1:])
    assert result.token_ids[0] == int(logits[-1].argmax())


def test_max_new_tokens_zero(llm) -> None:
    result = llm.generate(random_ids(5, seed=31), max_new_tokens=0)
    assert result.token_ids == [] and result.finish_reason == "length" and result.text == ""


def test_prompt_too_long_and_n_too_large(llm) -> None:
    with pytest.raises(ParameterError) as err:
        llm.generate(random_ids(llm.max_positions, seed=32))
    assert err.value.param == "inputs"
    with pytest.raises(ParameterError) as err:
        llm.generate("hi", n=1000)
    assert err.value.param == "n"


def test_timings_and_stats(llm) -> None:
    result = llm.generate(random_ids(50, seed=33), max_new_tokens=3)
    assert 0 < result.time_to_first_token <= result.total_time
    assert result.queue_time >= 0
    stats = llm.stats()
    assert {"waiting_requests", "running_requests", "prefix_cache", "generated_tokens"} <= set(
        stats
    )
