"""The small native kernels give the bits of the torch code they replace."""

from __future__ import annotations

import pytest
import torch

from fewshot.models import layers, native

NATIVE = native.load()


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
@pytest.mark.parametrize("shape", [(1, 4, 256), (7, 3, 64), (5, 2, 10)])
def test_rope_kernel_equals_torch(shape) -> None:
    torch.manual_seed(0)
    n, h, d = shape
    x = torch.randn(n, h, d) * 10
    freqs = (
        torch.arange(n).float()[:, None]
        * layers.rope_inv_freq({"rope_type": "default", "rope_theta": 1e4}, d)[None, :]
    )
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    c, s = cos[:, None, :], sin[:, None, :]
    want = x * c + layers.rotate_half(x) * s  # the torch formula apply_rotary replaces
    assert NATIVE is not None
    assert torch.equal(NATIVE.rope(x, cos, sin), want)
    assert torch.equal(layers.apply_rotary(x, cos, sin), want)  # which takes the kernel
    assert native.usable(x.bfloat16(), cos, sin) is None  # other dtypes stay on torch


def _naive(q, k, v, ends, scale, window, softcap):
    """q [t, Hq, D] against k/v [L, Hkv, D]; query i sees positions < ends[i] (and >= ends[i] -
    window); float64."""
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = torch.einsum("thd,lhd->htl", q.double(), k) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    pos = torch.arange(k.shape[0])[None, :]
    end = torch.tensor(ends)[:, None]
    ok = (pos < end) & ((pos >= end - window) if window else True)
    return torch.einsum("htl,lhd->thd", scores.masked_fill(~ok, float("-inf")).softmax(-1), v)


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [80, 64])  # AVX-512 slices of 64 and 16; AVX2 pairs of 32, 8
@pytest.mark.parametrize(
    ("n_kv", "window", "softcap"), [(2, None, None), (1, 23, None), (4, 9, 3.0)]
)
def test_a_prefill_chunk_attends_like_single_queries(dtype, dim, n_kv, window, softcap) -> None:
    """A run of queries at consecutive positions of one sequence (a prefill chunk) attends
    together (native_runs.c: 16 queries per item on AVX-512, 8 on AVX2; one at a time in plain
    C), on every instruction set this CPU runs: as the float64 reference, and each query's
    result does not depend on how the chunk is split or what else is in the batch."""
    torch.manual_seed(1)
    n_heads, bs, nblk = 4, 16, 12
    length = 150  # positions 0..149 in scattered blocks; the chunk is 131..149 (19 queries)
    table = torch.randperm(nblk)[: -(-length // bs)]
    k_all, v_all = torch.randn(length, n_kv, dim), torch.randn(length, n_kv, dim)
    k_cache = torch.zeros(n_kv, nblk, bs, dim, dtype=dtype)
    v_cache = torch.zeros(n_kv, nblk, bs, dim, dtype=dtype)
    for p in range(length):
        k_cache[:, table[p // bs], p % bs] = k_all[p].to(dtype)
        v_cache[:, table[p // bs], p % bs] = v_all[p].to(dtype)
    ends = list(range(132, length + 1))
    q = torch.randn(len(ends), n_heads, dim)
    assert NATIVE is not None

    def attend(kernel: native.Kernel, rows: list[int]) -> torch.Tensor:
        hi = torch.tensor([ends[i] for i in rows], dtype=torch.int32)
        lo = torch.zeros_like(hi) if window is None else torch.clamp(hi - window, min=0)
        tables = table[None].repeat(len(rows), 1).contiguous()
        return kernel.decode_attention(
            q[rows].contiguous(), k_cache, v_cache, tables, (lo, hi), 0.3, softcap
        )

    want = _naive(q, k_all.to(dtype), v_all.to(dtype), ends, 0.3, window, softcap)
    for isa in [i for i in native.ISAS if native.ISAS[i] <= native.ISAS[NATIVE.isa]]:
        kernel = native.Kernel(NATIVE.lib, isa)
        whole = attend(kernel, list(range(len(ends))))
        torch.testing.assert_close(whole.double(), want, atol=1e-5, rtol=1e-5, msg=isa)
        halves = torch.cat([attend(kernel, list(range(9))), attend(kernel, list(range(9, 19)))])
        assert torch.equal(whole, halves), isa


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
@pytest.mark.parametrize("vocab", [5, 50_257, 262_144])
def test_greedy_kernel_is_torchs_argmax_and_logprob(vocab) -> None:
    """fs_greedy on every instruction set this CPU runs: the first maximum (ties included), and
    its log_softmax up to float rounding; a row's result does not depend on the other rows."""
    torch.manual_seed(3)
    logits = torch.randn(6, vocab) * 4
    logits[1, :] = 0.5  # every value tied: the first index wins
    logits[2, vocab - 1] = 40.0  # the maximum in the last (tail) lanes
    logits[3, [1, vocab - 2]] = 30.0  # two maxima
    want_tok = logits.max(dim=-1).indices
    want_lp = torch.log_softmax(logits.double(), dim=-1).gather(1, want_tok[:, None])[:, 0]
    assert NATIVE is not None
    for isa in [i for i in native.ISAS if native.ISAS[i] <= native.ISAS[NATIVE.isa]]:
        kernel = native.Kernel(NATIVE.lib, isa)
        tokens, logprobs = kernel.greedy(logits)
        assert tokens == want_tok.tolist(), isa
        torch.testing.assert_close(torch.tensor(logprobs).double(), want_lp, atol=1e-5, rtol=1e-6)
        assert kernel.greedy(logits[3:4].contiguous()) == ([tokens[3]], [logprobs[3]])


def _fs_exp(x: torch.Tensor) -> torch.Tensor:
    """native_math.h's fs_exp in float32 torch operations, one rounding per operation."""
    x = x.clamp(-87.0, 87.0)
    n = torch.round(x * 1.44269504)
    r = (x - n * 0.693145752) - n * 1.42860677e-6
    p = torch.full_like(x, 1.0 / 5040.0)
    for c in (1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
        p = p * r + c
    return p * ((n.to(torch.int32) + 127) << 23).view(torch.float32)


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
def test_activations_are_their_formula_to_the_bit() -> None:
    """fs_act (every vector path: GCC's AVX-512 clone, the AVX2 intrinsics, and the scalar
    tails) computes its documented formula operation by operation."""
    torch.manual_seed(5)
    x = torch.cat([torch.randn(4099) * 3, torch.tensor([0.0, -0.0, 60.0, -60.0, 100.0, -100.0])])
    u = 0.7978845608 * (x + 0.044715 * x * x * x)
    e = _fs_exp(-2.0 * u.abs())
    t = (1.0 - e) / (1.0 + e)
    gelu = 0.5 * x * (1.0 + torch.where(u < 0, -t, t))
    silu = x / (1.0 + _fs_exp(-x))
    assert NATIVE is not None
    assert torch.equal(NATIVE.act(x, "gelu_tanh"), gelu)
    assert torch.equal(NATIVE.act(x, "silu"), silu)
    torch.testing.assert_close(gelu, torch.nn.functional.gelu(x, approximate="tanh"))
