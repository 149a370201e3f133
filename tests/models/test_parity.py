"""Native models against transformers' implementations (same random weights, fp32, eval).

Tolerance: logits agree within atol 1e-4 (rtol 1e-4); cached vs uncached within atol 1e-4.
Contexts are longer than 300 tokens, so GPT-Neo's 256-token local window and the tiny Gemma 3
sliding window (32) are both crossed.
"""

from __future__ import annotations

import pytest
import torch

from fewshot.models.base import CausalLM, KVCache
from fewshot.models.layers import cached_attention

ATOL = 1e-4
RTOL = 1e-4
PROMPT_LEN = 310
NEW_TOKENS = 20


def _prompt(n: int, seed: int, vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab - 1, (n,), generator=gen)


def _full_logits(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    cache = model.new_cache()
    out = model(ids, [cache], [len(ids)], logits="all")
    assert cache.length == len(ids)
    return out


def _greedy(model: CausalLM, ids: torch.Tensor, steps: int) -> list[int]:
    eos = set(model.spec.eos_token_ids)
    cache = model.new_cache()
    logits = model(ids, [cache], [len(ids)])  # [1, vocab]
    out: list[int] = []
    for _ in range(steps):
        tok = int(logits[0].argmax())
        out.append(tok)
        if tok in eos:
            break
        logits = model(torch.tensor([tok]), [cache], [1])
    return out


@torch.no_grad()
def test_logits_match_transformers(pair) -> None:
    hf, native = pair
    ids = _prompt(PROMPT_LEN, seed=1, vocab=native.spec.vocab_size)
    expected = hf(ids[None]).logits[0].float()  # [T, vocab]
    got = _full_logits(native, ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_greedy_matches_transformers_generate(pair) -> None:
    hf, native = pair
    ids = _prompt(PROMPT_LEN, seed=2, vocab=native.spec.vocab_size)
    hf_out = hf.generate(
        ids[None],
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
    )
    expected = hf_out[0, len(ids) :].tolist()
    assert _greedy(native, ids, NEW_TOKENS) == expected


@torch.no_grad()
def test_cached_decoding_equals_full_forward(pair) -> None:
    _, native = pair
    ids = _prompt(PROMPT_LEN, seed=3, vocab=native.spec.vocab_size)
    full = _full_logits(native, ids)  # [T, vocab]
    split = 280
    cache = native.new_cache(capacity=8)  # forces the cache to grow on the way
    rows = [native(ids[:split], [cache], [split], logits="all")]
    for pos in range(split, len(ids)):
        rows.append(native(ids[pos : pos + 1], [cache], [1], logits="all"))
    assert cache.length == len(ids)
    torch.testing.assert_close(torch.cat(rows), full, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_mixed_batch_equals_each_alone(pair) -> None:
    _, native = pair
    vocab = native.spec.vocab_size
    prefixes = [_prompt(n, seed=10 + i, vocab=vocab) for i, n in enumerate((300, 5, 40))]
    news = [_prompt(n, seed=20 + i, vocab=vocab) for i, n in enumerate((1, 33, 7))]

    def primed(prefix: torch.Tensor):
        cache = native.new_cache()
        native(prefix, [cache], [len(prefix)])
        return cache

    # each sequence alone
    alone_all, alone_last = [], []
    for prefix, new in zip(prefixes, news, strict=True):
        cache = primed(prefix)
        alone_all.append(native(new, [cache], [len(new)], logits="all"))
        cache.truncate(len(prefix))
        alone_last.append(native(new, [cache], [len(new)], logits="last")[0])
    # all three in one flattened batch: a decode, a prefill continuation, a longer chunk
    caches = [primed(p) for p in prefixes]
    counts = [len(n) for n in news]
    batch_all = native(torch.cat(news), caches, counts, logits="all")
    assert [c.length for c in caches] == [
        len(p) + len(n) for p, n in zip(prefixes, news, strict=True)
    ]
    for c, p in zip(caches, prefixes, strict=True):
        c.truncate(len(p))
    batch_last = native(torch.cat(news), caches, counts, logits="last")
    assert batch_last.shape == (3, vocab)
    torch.testing.assert_close(batch_all, torch.cat(alone_all), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(batch_last, torch.stack(alone_last), atol=ATOL, rtol=RTOL)


def test_spec_and_state_dict_keys(pair) -> None:
    hf, native = pair
    hf_keys = set(hf.state_dict())
    own = set(native.state_dict())
    assert own == hf_keys
    spec = native.spec
    assert spec.n_layers == len(spec.windows)
    assert spec.eos_token_ids, "eos taken from the config"
    assert any(w is None for w in spec.windows)
    if spec.arch != "llama":  # the tiny GPT-Neo and Gemma 3 mix global and windowed layers
        assert any(w is not None for w in spec.windows)
    cache = native.new_cache()
    assert cache.n_kv_heads == spec.n_kv_heads and cache.head_dim == spec.head_dim


def test_load_rejects_missing_and_misshapen(pair) -> None:
    hf, native = pair
    sd = dict(hf.state_dict())
    key = next(k for k in sd if "layers.1." in k or "h.1." in k)
    missing = {k: v for k, v in sd.items() if k != key}
    try:
        native.load_hf_state_dict(missing)
    except KeyError as e:
        assert key in str(e)
    else:
        raise AssertionError("missing key not reported")
    bad = dict(sd)
    bad[key] = torch.zeros(3)
    try:
        native.load_hf_state_dict(bad)
    except ValueError as e:
        assert key in str(e)
    else:
        raise AssertionError("shape mismatch not reported")


def _naive_attention(q, k, v, start, scale, window, softcap):
    """q [t, Hq, D], k/v [L, Hkv, D] for positions 0..L-1; queries at start..start+t-1."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # [L, Hq, D]
    scores = torch.einsum("thd,lhd->htl", q, k) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_pos = torch.arange(start, start + q.shape[0])[:, None]
    k_pos = torch.arange(k.shape[0])[None, :]
    ok = (k_pos <= q_pos) & ((q_pos - k_pos < window) if window else True)
    scores = scores.masked_fill(~ok, float("-inf"))
    return torch.einsum("htl,lhd->thd", scores.softmax(-1), v)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_cached_attention_matches_naive_reference(window, softcap, n_kv) -> None:
    torch.manual_seed(0)
    n_heads, dim = 4, 8
    lengths, news = [0, 11, 3], [9, 1, 6]  # fresh prefill, decode, continued prefill
    caches, qs, ks, vs, expected = [], [], [], [], []
    for length, t in zip(lengths, news, strict=True):
        k_old, v_old = torch.randn(length, n_kv, dim), torch.randn(length, n_kv, dim)
        cache = KVCache(1, n_kv, dim, torch.float32, capacity=4)
        cache.load_prefix([k_old.transpose(0, 1)], [v_old.transpose(0, 1)])
        q, k, v = torch.randn(t, n_heads, dim), torch.randn(t, n_kv, dim), torch.randn(t, n_kv, dim)
        k_all, v_all = torch.cat([k_old, k]), torch.cat([v_old, v])
        expected.append(_naive_attention(q, k_all, v_all, length, 0.3, window, softcap))
        caches.append(cache)
        qs.append(q), ks.append(k), vs.append(v)
    out = cached_attention(
        torch.cat(qs),
        torch.cat(ks),
        torch.cat(vs),
        caches,
        news,
        0,
        scale=0.3,
        window=window,
        softcap=softcap,
    )
    want = torch.cat(expected).reshape(sum(news), n_heads * dim)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert [c.length for c in caches] == lengths  # the model, not attention, advances
