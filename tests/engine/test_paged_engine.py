"""Engine v2 end to end on the tiny GPT-Neo: prefix hits copy no K/V and run only the suffix,
n > 1 shares the prompt's blocks, a pool far smaller than the load still serves everything
exactly, and the transformers fallback stays correct without prefix sharing."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import random_ids

from fewshot.engine.llm import LLM
from fewshot.engine.types import SamplingParams
from fewshot.models.base import CausalLM
from fewshot.models.fallback import HFFallbackLM
from fewshot.models.kv_pool import KVPool

PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True)


class Counting(CausalLM):
    """The wrapped model, counting the tokens every forward runs."""

    def __init__(self, inner: CausalLM) -> None:
        super().__init__()
        self.inner = inner
        self.spec = inner.spec
        self.paged = inner.paged
        self.tokens: list[int] = []

    def forward(self, input_ids, positions, attn, logits_indices):
        self.tokens.append(int(input_ids.numel()))
        return self.inner(input_ids, positions, attn, logits_indices)

    def fork(self, src_seq: int, dst_seq: int) -> None:
        self.inner.fork(src_seq, dst_seq)

    def release(self, seq_id: int) -> None:
        self.inner.release(seq_id)


def test_prefix_hit_runs_only_the_suffix(neo, gpt2_tokenizer) -> None:
    prefix = random_ids(300, seed=40)
    counting = Counting(neo)
    with LLM.from_model(counting, gpt2_tokenizer, threads=1, kv_cache_mb=32) as llm:
        first = llm.generate(prefix + random_ids(5, seed=41), PARAMS)
        counting.tokens.clear()
        second = llm.generate(prefix + random_ids(9, seed=42), PARAMS)
        pool = llm.engine.runner.pool
        stats = llm.stats()
    # 18 whole blocks by reference, and the prefix's 12 tokens in the first request's 19th
    # block by one block copy
    assert first.cached_tokens == 0 and second.cached_tokens == 300
    # prefill of the 9 query tokens only, then 5 one-token decodes
    assert counting.tokens == [9, 1, 1, 1, 1, 1]
    assert pool is not None
    # the prefix's 12 positions of that block, not the first request's tokens after them
    assert pool.copied_bytes == sum(
        t[:, 0, :12].numel() * t.element_size() for t in pool.k + pool.v
    )
    assert stats["kv_cache"]["hits"] == 1 and stats["kv_cache"]["hit_tokens"] == 300
    assert stats["kv_cache"]["partial_hits"] == 1
    assert stats["kv_cache"]["blocks_used"] == 0 and stats["kv_cache"]["blocks_cached"] >= 18


def test_n_sequences_share_the_prompt_blocks(neo, gpt2_tokenizer) -> None:
    prompt = random_ids(40, seed=43)  # 2 full blocks + 8 tokens
    params = SamplingParams(max_new_tokens=5, do_sample=True, seed=7, n=3)
    counting = Counting(neo)
    with LLM.from_model(counting, gpt2_tokenizer, threads=1, kv_cache_mb=32) as llm:
        results = llm.generate_many(prompt, params)
        stats = llm.stats()
        pool = llm.engine.runner.pool
        alone = [llm.generate(prompt, params, n=1, seed=7 + i).token_ids for i in range(3)]
    assert counting.tokens[0] == 40  # the prompt ran once for all three
    assert [r.token_ids for r in results] == alone
    assert stats["kv_cache"]["copied_blocks"] == 2  # only the partial block, once per child
    assert pool is not None and pool.copied_bytes > 0


def test_many_long_requests_through_a_tiny_pool(neo, gpt2_tokenizer) -> None:
    """64 concurrent requests; the pool holds about 8 of them at once: all complete, exactly."""
    prompts = [random_ids(100 + (i % 5), seed=100 + i) for i in range(64)]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, prefix_caching=False) as solo:
        expected = [solo.generate(p, params).token_ids for p in prompts[:4]]
    # 8 requests x 8 blocks of 16 tokens (prompt + new tokens <= 113): 64 blocks
    block = 2 * 4 * 4 * 16 * 16 * 4  # layers x heads x head_dim x block x fp32 bytes x K,V
    with LLM.from_model(
        neo, gpt2_tokenizer, threads=1, kv_cache_mb=64 * block / 2**20, max_batch_size=32
    ) as llm:
        assert llm.engine.kv.num_blocks == 64
        handles = [llm.submit(p, params, loop=None) for p in prompts]
        results = [h.wait()[0] for h in handles]
        stats = llm.stats()
    assert all(len(r.token_ids) == 8 and r.finish_reason == "length" for r in results)
    assert [r.token_ids for r in results[:4]] == expected
    assert stats["finished"] == 64 and stats["kv_cache"]["blocks_used"] == 0


def test_preempted_sequences_resume_exactly(neo, gpt2_tokenizer) -> None:
    """A pool too small for the batch's decodes: sequences are preempted and recomputed."""
    prompts = [random_ids(30, seed=200 + i) for i in range(6)]
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, prefix_caching=False) as solo:
        expected = [solo.generate(p, params).token_ids for p in prompts]
    block = 2 * 4 * 4 * 16 * 16 * 4
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, kv_cache_mb=14 * block / 2**20) as llm:
        handles = [llm.submit(p, params, loop=None) for p in prompts]
        results = [h.wait()[0].token_ids for h in handles]
        stats = llm.stats()
    assert results == expected
    assert stats["preemptions"] > 0


def test_prompt_too_big_for_the_pool_is_refused(neo, gpt2_tokenizer) -> None:
    block = 2 * 4 * 4 * 16 * 16 * 4
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, kv_cache_mb=2 * block / 2**20) as llm:
        with pytest.raises(ValueError, match="KV memory"):
            llm.generate(random_ids(40, seed=1))
        result = llm.generate(random_ids(20, seed=2), max_new_tokens=50, ignore_eos=True)
    # 32 slots: the 12th new token is fed at position 31; the 13th never needs a slot
    assert result.finish_reason == "length" and len(result.token_ids) == 13


@pytest.fixture(scope="module")
def fallback(gpt2_tokenizer) -> HFFallbackLM:
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=50272, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
        num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=32,
        eos_token_id=50256, bos_token_id=50256, pad_token_id=1, init_std=0.2,
    )  # fmt: skip
    return HFFallbackLM(OPTForCausalLM(config).eval())


def test_fallback_shares_prefixes_and_n_correctly(fallback, gpt2_tokenizer) -> None:
    prefix = random_ids(40, seed=300)
    prompts = [prefix + random_ids(4, seed=301 + i) for i in range(3)]
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    sampled = SamplingParams(max_new_tokens=5, do_sample=True, seed=3, n=2)
    with LLM.from_model(fallback, gpt2_tokenizer, threads=1, kv_cache_mb=8) as llm:
        assert llm.stats()["prefix_sharing"] is False
        alone = [llm.generate(p, params).token_ids for p in prompts]
        handles = [llm.submit(p, params, loop=None) for p in prompts]
        together = [h.wait()[0] for h in handles]
        pair = llm.generate_many(prompts[0], sampled)
        singles = [llm.generate(prompts[0], sampled, n=1, seed=3 + i) for i in range(2)]
    assert [r.token_ids for r in together] == alone
    assert all(r.cached_tokens == 0 for r in together)
    assert [r.token_ids for r in pair] == [s.token_ids for s in singles]


def test_bf16_kv_stays_close_to_fp32_kv(neo, gpt2_tokenizer) -> None:
    """KV stored in bf16 (half the memory): prompt logprobs stay close to fp32 KV's."""
    prompt = random_ids(200, seed=400)
    params = SamplingParams(max_new_tokens=1, prompt_logprobs=True)
    results = {}
    for kv_dtype in ("fp32", "bf16"):
        with LLM.from_model(
            neo, gpt2_tokenizer, threads=1, kv_cache_mb=16, kv_dtype=kv_dtype
        ) as llm:
            assert llm.engine.runner.pool.dtype == getattr(
                torch, {"fp32": "float32"}.get(kv_dtype, "bfloat16")
            )
            results[kv_dtype] = llm.generate(prompt, params).prefill
    a = torch.tensor([t.logprob for t in results["fp32"][1:]])
    b = torch.tensor([t.logprob for t in results["bf16"][1:]])
    err = (a - b).abs()  # this tiny model's logprobs are ~-12 on average: peaked logits
    assert err.mean() < 0.05 and err.max() < 0.5, (err.mean(), err.max())


def test_a_block_copy_moves_only_the_positions_asked_for() -> None:
    """A partial hit copies the shared tokens' K/V, never the source owner's tokens after them."""
    pool = KVPool(2, 2, 4, num_blocks=3, block_size=4, dtype=torch.float32)
    pool.zero_blocks([0, 1, 2])
    for t in pool.k + pool.v:
        t[:, 0] = torch.arange(1, 33, dtype=t.dtype).view(2, 4, 4)
    pool.copy_blocks([(0, 2, 3)])
    for t in pool.k + pool.v:
        assert torch.equal(t[:, 2, :3], t[:, 0, :3]) and not t[:, 2, 3:].any()
    assert pool.copied_bytes == 4 * 2 * 3 * 4 * 4  # 4 tensors x 2 heads x 3 positions x 4 dims
