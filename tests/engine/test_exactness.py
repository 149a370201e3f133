"""THE exactness test: batching and prefix-cache reuse change no token (fp32, GPT-Neo).

Several requests share a 300-token prefix (longer than GPT-Neo's 256-token local window) and
differ in their suffix. Run concurrently through one engine (batched decodes, a prefill mixed
into running decodes, prefix-cache hits), each must give exactly the greedy tokens it gives
alone on an engine without a prefix cache, and exactly what transformers' `generate` gives.
Every test runs on each `device`: the CPU, and CUDA where torch sees a GPU.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import random_ids

from fewshot.engine.llm import LLM
from fewshot.engine.types import SamplingParams

PREFIX = random_ids(300, seed=10)
SUFFIXES = [random_ids(n, seed=20 + n) for n in (7, 16, 23, 40)]
NEW = 12
PARAMS = SamplingParams(max_new_tokens=NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def neo(neo, to_device):
    """The session's tiny GPT-Neo on each device."""
    return to_device(neo)


@pytest.fixture(scope="module")
def alone(neo, gpt2_tokenizer) -> list[list[int]]:
    """Each request run by itself, no prefix cache."""
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, prefix_caching=False) as solo:
        return [solo.generate(PREFIX + s, PARAMS).token_ids for s in SUFFIXES]


@torch.no_grad()
def test_alone_equals_transformers_generate(hf_neo, neo, to_device, alone) -> None:
    hf_neo = to_device(hf_neo)
    for suffix, tokens in zip(SUFFIXES, alone, strict=True):
        ids = torch.tensor([PREFIX + suffix], device=neo.device)
        out = hf_neo.generate(ids, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)
        assert out[0, ids.shape[1] :].tolist() == tokens


def test_concurrent_with_prefix_cache_equals_alone(neo, gpt2_tokenizer, alone) -> None:
    with LLM.from_model(
        neo, gpt2_tokenizer, threads=1, kv_cache_mb=64, prefill_chunk=64
    ) as engine_llm:
        # warm the cache with the first request, then start it again with the others at once
        first = engine_llm.generate(PREFIX + SUFFIXES[0], PARAMS)
        assert first.token_ids == alone[0] and first.cached_tokens == 0
        handles = [engine_llm.submit(PREFIX + s, PARAMS) for s in SUFFIXES]
        results = [h.wait()[0] for h in handles]
        stats = engine_llm.stats()
    for result, expected in zip(results, alone, strict=True):
        assert result.token_ids == expected
        assert result.cached_tokens >= 288  # 300-token prefix, 16-token blocks
        assert result.finish_reason == "length"
    assert stats["prefix_cache"]["hits"] == len(SUFFIXES)


def test_staggered_joins_equal_alone(neo, gpt2_tokenizer, alone) -> None:
    """Requests join while others decode: chunked prefills are mixed into decode steps."""
    with LLM.from_model(
        neo, gpt2_tokenizer, threads=1, kv_cache_mb=64, prefill_chunk=32, start=False
    ) as engine_llm:
        engine = engine_llm.engine
        handles = []
        for suffix in SUFFIXES:
            handles.append(engine.submit(PREFIX + suffix, PARAMS, loop=None))
            for _ in range(4):
                engine.step()
        while any(engine.step() for _ in range(1)):
            pass
        results = [h.wait()[0] for h in handles]
    assert [r.token_ids for r in results] == alone


def test_cold_burst_waits_for_the_shared_prefix(neo, gpt2_tokenizer, alone) -> None:
    """Requests arriving together with a shared, uncached prefix: one prefills it, the others
    wait for it to enter the cache instead of each computing it again."""
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, kv_cache_mb=64) as engine_llm:
        handles = [engine_llm.submit(PREFIX + s, PARAMS) for s in SUFFIXES]
        results = [h.wait()[0] for h in handles]
    assert [r.token_ids for r in results] == alone
    # the whole prefix: 18 blocks by reference, the 12 tokens of the 19th by a copy
    assert sorted(r.cached_tokens for r in results) == [0, 300, 300, 300]


@pytest.fixture(scope="module")
def gemma_pair(to_device):
    """A tiny Gemma 3 (sliding window 32, GQA, QK-norm) over the GPT-2 vocabulary."""
    from transformers import Gemma3ForCausalLM as HFGemma3
    from transformers import Gemma3TextConfig

    from fewshot.models.gemma3 import Gemma3ForCausalLM

    config = Gemma3TextConfig(
        vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=1024, query_pre_attn_scalar=32, initializer_range=0.2,
        eos_token_id=50256, bos_token_id=50256, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(1)
    hf = HFGemma3(config).eval()
    native = Gemma3ForCausalLM(config).eval()
    native.load_hf_state_dict(hf.state_dict())
    return to_device(hf), to_device(native)


def test_gemma3_sliding_window_batched_and_cached_equals_alone(gemma_pair, gpt2_tokenizer):
    """Gemma 3 with a 300-token shared prefix (far past its 32-token window): concurrent
    requests with prefix hits give the tokens each gives alone, and transformers' tokens."""
    hf, native = gemma_pair
    with LLM.from_model(native, gpt2_tokenizer, threads=1, prefix_caching=False) as solo:
        alone = [solo.generate(PREFIX + s, PARAMS).token_ids for s in SUFFIXES]
    with torch.no_grad():
        ids = torch.tensor([PREFIX + SUFFIXES[1]], device=native.device)
        out = hf.generate(ids, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)
    assert out[0, ids.shape[1] :].tolist() == alone[1]
    with LLM.from_model(native, gpt2_tokenizer, threads=1, kv_cache_mb=16) as llm:
        llm.generate(PREFIX + SUFFIXES[0], PARAMS)
        handles = [llm.submit(PREFIX + s, PARAMS) for s in SUFFIXES]
        results = [h.wait()[0] for h in handles]
    assert [r.token_ids for r in results] == alone
    assert all(r.cached_tokens >= 288 for r in results)


def test_partial_hit_then_fork_equals_alone(neo, gpt2_tokenizer) -> None:
    """A request whose prefix ends mid-block (its tokens there copied from another request's
    block) and that then forks n sequences from its prompt: each sequence samples what it
    samples on an engine without a prefix cache, with the same logprobs up to float rounding
    (a wrong or missing copied position moves them by far more)."""
    params = SamplingParams(max_new_tokens=6, do_sample=True, seed=3, n=3, ignore_eos=True)
    prompt = PREFIX + SUFFIXES[1]
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, prefix_caching=False) as solo:
        want = solo.generate_many(prompt, params)
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, kv_cache_mb=64) as engine_llm:
        engine_llm.generate(PREFIX + SUFFIXES[2], PARAMS)
        results = engine_llm.generate_many(prompt, params)
        stats = engine_llm.stats()["kv_cache"]
    assert [r.token_ids for r in results] == [r.token_ids for r in want]
    got = torch.tensor([[t.logprob for t in r.tokens] for r in results])
    expected = torch.tensor([[t.logprob for t in r.tokens] for r in want])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert results[0].cached_tokens == 300 and stats["partial_hits"] == 1


def test_cuda_graphs_equal_eager_steps(neo, gpt2_tokenizer) -> None:
    """Steps run as fixed-shape steps (on CUDA: captured graphs, replayed; elsewhere the same
    padded step, eagerly) give the eager engine's tokens: batched decodes (3 sequences padded to
    4, the padding writing to the scratch block), and the queries' chunks after their prefix
    hits (7-40 tokens, each padded to a rows bucket) beside them."""
    with LLM.from_model(
        neo, gpt2_tokenizer, threads=1, prefix_caching=False, cuda_graphs=False
    ) as eager:
        want = [eager.generate(PREFIX + s, PARAMS).token_ids for s in SUFFIXES]
    with LLM.from_model(
        neo, gpt2_tokenizer, threads=1, kv_cache_mb=64, cuda_graphs=True
    ) as engine_llm:
        assert engine_llm.generate(PREFIX + SUFFIXES[0], PARAMS).token_ids == want[0]
        handles = [engine_llm.submit(PREFIX + s, PARAMS) for s in SUFFIXES[1:]]
        results = [h.wait()[0] for h in handles]
        graphs = engine_llm.engine.runner.graphs
    assert [r.token_ids for r in results] == want[1:]
    assert graphs is not None and {(1, 1, 32), (4, 1, 32)} <= set(graphs.shapes)
    assert any(rows >= 16 for _, rows, _ in graphs.shapes)  # a query's chunk ran fixed-shape
