"""Prompt-lookup speculative decoding: the proposer, greedy outputs identical with and without
it, and the sampling rule keeps each token's distribution."""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import random_ids

from fewshot.engine.llm import LLM
from fewshot.engine.request import Request, Sequence
from fewshot.engine.runner import ModelRunner
from fewshot.engine.sampling import Sampler
from fewshot.engine.speculation import propose
from fewshot.engine.types import SamplingParams
from fewshot.models import native, native_step
from fewshot.models.quant import quantize_model


def test_propose_takes_the_latest_longest_match() -> None:
    ids = [5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 1, 2, 3]
    assert propose(ids, 2) == [7, 8]  # the latest earlier "1 2 3" is followed by 7 8
    assert propose(ids, 10) == [7, 8, 4, 1, 2, 3]
    assert propose([4, 5, 6, 4], 3) == [5, 6, 4]  # falls back to a 1-gram
    assert propose([1, 2, 3], 3) == [] and propose([1, 2, 1], 0) == []


def few_shot_ids(n_examples: int = 12) -> list[int]:
    """A few-shot-shaped prompt: repeated field tokens between random content."""
    ids: list[int] = []
    for i in range(n_examples):
        ids += [7, 8] + random_ids(3, seed=500 + i) + [9, 10, 11] + random_ids(2, seed=600 + i)
    return ids + [7, 8] + random_ids(3, seed=999) + [9, 10]


def test_greedy_is_identical_with_speculation(neo, gpt2_tokenizer) -> None:
    prompts = [few_shot_ids(), random_ids(40, seed=3) * 3, random_ids(30, seed=4)]
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, kv_cache_mb=16) as plain:
        expected = [plain.generate(p, params).token_ids for p in prompts]
    with LLM.from_model(
        neo,
        gpt2_tokenizer,
        threads=1,
        kv_cache_mb=16,
        speculative_tokens=4,
        speculative_max_batch=8,  # drafts in batches too
    ) as spec:
        handles = [spec.submit(p, params, loop=None) for p in prompts]  # batched too
        got = [h.wait()[0].token_ids for h in handles]
        alone = [spec.generate(p, params).token_ids for p in prompts]
        stats = spec.stats()
    assert got == expected and alone == expected
    assert stats["spec_drafted"] > 0 and stats["spec_accepted"] > 0
    assert 0 < stats["spec_acceptance"] <= 1


def _seq(params: SamplingParams, seed: int) -> Sequence:
    req = Request(0, [1], params, seed, None, 0.0)
    seq = Sequence(0, req, 0, [1], 1)
    seq.sampler = Sampler(params, seed)
    return seq


def test_sampled_tokens_keep_their_distribution() -> None:
    """Draft x accepted with p(x), else a draw from p without x: the emitted token ~ p."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = torch.log(probs)[None].repeat(2, 1)  # the row after the fed token, and a bonus row
    params = SamplingParams(max_new_tokens=4, do_sample=True, temperature=1.0)
    seq = _seq(params, seed=1)
    counts = torch.zeros(4)
    accepted_total = 0
    trials = 4000
    for _ in range(trials):
        choices, accepted = ModelRunner.verify(seq, rows, [1])
        counts[choices[0].token_id] += 1
        accepted_total += accepted
    freq = counts / trials
    assert torch.allclose(freq, probs, atol=0.03), freq
    assert abs(accepted_total / trials - 0.3) < 0.03  # acceptance = p(draft)


def test_greedy_verification_stops_at_the_first_disagreement() -> None:
    rows = torch.full((4, 6), -5.0)
    for i, best in enumerate([2, 3, 1, 4]):
        rows[i, best] = 5.0
    seq = _seq(SamplingParams(max_new_tokens=8), seed=0)
    choices, accepted = ModelRunner.verify(seq, rows, [2, 3, 0])
    assert accepted == 2 and [c.token_id for c in choices] == [2, 3, 1]
    choices, accepted = ModelRunner.verify(seq, rows, [2, 3, 1])
    assert accepted == 3 and [c.token_id for c in choices] == [2, 3, 1, 4]


def test_compiled_engine_equals_eager(neo, gpt2_tokenizer, to_device) -> None:
    """torch.compile (Inductor, dynamic shapes) gives the eager engine's tokens, batched and
    with a prefix hit, on each device."""
    neo = to_device(neo)
    prompts = [few_shot_ids(4), random_ids(30, seed=7), random_ids(12, seed=8)]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, kv_cache_mb=16) as eager:
        expected = [eager.generate(p, params).token_ids for p in prompts]
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, kv_cache_mb=16, compile=True) as comp:
        handles = [comp.submit(p, params, loop=None) for p in prompts]
        got = [h.wait()[0].token_ids for h in handles]
        again = comp.generate(prompts[0], params)
    assert got == expected and again.token_ids == expected[0] and again.cached_tokens > 0


def test_native_layers_change_nothing_in_the_engine(neo, gpt2_tokenizer) -> None:
    """int8 through the engine: batched requests sharing a prefix, with speculation, give the
    same tokens and logprobs with the decoder layers in C (models/native_step.py) as in Python."""
    kernel = native.load()
    if kernel is None or kernel.gemv_rows == 0:
        pytest.skip("no native GEMV here")
    model = quantize_model(copy.deepcopy(neo)).eval()
    shared = few_shot_ids()
    prompts = [shared + random_ids(5, seed=s) for s in (1, 2, 3)] + [random_ids(30, seed=4)]
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    runs = {}
    for fused in (False, True):
        model.fuse_layers = fused
        with LLM.from_model(
            model,
            gpt2_tokenizer,
            threads=1,
            kv_cache_mb=16,
            speculative_tokens=3,
            speculative_max_batch=8,
        ) as llm:
            first = llm.generate(prompts[0], params)  # its prefix is then cached for the rest
            handles = [llm.submit(p, params, loop=None) for p in prompts[1:]]
            results = [first, *(h.wait()[0] for h in handles)]
            runs[fused] = [(r.token_ids, [t.logprob for t in r.tokens]) for r in results]
    model.fuse_layers = True
    assert runs[True] == runs[False]
    assert native_step.FusedLayers.build(model.decode_layers()) is not None
