"""Native models against transformers' implementations (same random weights, fp32, eval).

Tolerance: logits agree within atol 1e-4 (rtol 1e-4); cached vs uncached within atol 1e-4.
Contexts are longer than 300 tokens, so GPT-Neo's 256-token local window and the tiny Gemma 3
sliding window (32) are both crossed.
"""

from __future__ import annotations

import pytest
import torch

from fewshot.models import attention, native
from fewshot.models.attention import paged_attention
from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM
from fewshot.models.kv_pool import KVPool
from fewshot.models.standalone import Arena, new_cache, run
from fewshot.models.step_graphs import StepGraphs

ATOL = 1e-4
RTOL = 1e-4
PROMPT_LEN = 310
NEW_TOKENS = 20


@pytest.fixture(params=["torch", "native"])
def decode_path(request, monkeypatch) -> str:
    """Decoding queries through the torch paths (gather, in-place runs, cascade) or the native
    kernel (`native_attention.c`), which CPU pools use wherever it builds."""
    if request.param == "torch":
        monkeypatch.setattr(attention, "_decode_kernel", lambda k_cache: None)
    elif native.load() is None:
        pytest.skip("no C compiler")
    return request.param


def _prompt(n: int, seed: int, vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab - 1, (n,), generator=gen)


def _tol(model: CausalLM) -> dict[str, float]:
    """ATOL/RTOL on the CPU; on CUDA 1e-3: its kernels sum in other orders (a misplaced key or
    position moves logits by far more)."""
    tol = ATOL if model.device.type == "cpu" else 1e-3
    return {"atol": tol, "rtol": tol}


def _full_logits(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    cache = new_cache(model)
    out = run(model, ids, [cache], [len(ids)], logits="all")
    assert cache.length == len(ids)
    return out


def _greedy(model: CausalLM, ids: torch.Tensor, steps: int) -> list[int]:
    eos = set(model.spec.eos_token_ids)
    cache = new_cache(model)
    logits = run(model, ids, [cache], [len(ids)])  # [1, vocab]
    out: list[int] = []
    for _ in range(steps):
        tok = int(logits[0].argmax())
        out.append(tok)
        if tok in eos:
            break
        logits = run(model, torch.tensor([tok]), [cache], [1])
    return out


@torch.no_grad()
def test_logits_match_transformers(dpair) -> None:
    hf, native = dpair
    ids = _prompt(PROMPT_LEN, seed=1, vocab=native.spec.vocab_size).to(native.device)
    expected = hf(ids[None]).logits[0].float()  # [T, vocab]
    got = _full_logits(native, ids)
    assert got.dtype == torch.float32 and got.device == native.device
    torch.testing.assert_close(got, expected, **_tol(native))


@torch.no_grad()
def test_greedy_matches_transformers_generate(dpair) -> None:
    hf, native = dpair
    ids = _prompt(PROMPT_LEN, seed=2, vocab=native.spec.vocab_size).to(native.device)
    hf_out = hf.generate(
        ids[None],
        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=native.device),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
    )
    expected = hf_out[0, len(ids) :].tolist()
    assert _greedy(native, ids, NEW_TOKENS) == expected


@torch.no_grad()
def test_cached_decoding_equals_full_forward(dpair) -> None:
    _, native = dpair
    ids = _prompt(PROMPT_LEN, seed=3, vocab=native.spec.vocab_size)
    full = _full_logits(native, ids)  # [T, vocab]
    split = 280
    cache = Arena(native, blocks=2).new_cache()  # forces the pool to grow on the way
    rows = [run(native, ids[:split], [cache], [split], logits="all")]
    for pos in range(split, len(ids)):
        rows.append(run(native, ids[pos : pos + 1], [cache], [1], logits="all"))
    assert cache.length == len(ids)
    torch.testing.assert_close(torch.cat(rows), full, **_tol(native))


@torch.no_grad()
def test_mixed_batch_equals_each_alone(dpair) -> None:
    _, native = dpair
    vocab = native.spec.vocab_size
    prefixes = [_prompt(n, seed=10 + i, vocab=vocab) for i, n in enumerate((300, 5, 40))]
    news = [_prompt(n, seed=20 + i, vocab=vocab) for i, n in enumerate((1, 33, 7))]

    arena = Arena(native)

    def primed(prefix: torch.Tensor):
        cache = arena.new_cache()
        run(native, prefix, [cache], [len(prefix)])
        return cache

    # each sequence alone
    alone_all, alone_last = [], []
    for prefix, new in zip(prefixes, news, strict=True):
        cache = primed(prefix)
        alone_all.append(run(native, new, [cache], [len(new)], logits="all"))
        cache.length = len(prefix)
        alone_last.append(run(native, new, [cache], [len(new)], logits="last")[0])
    # all three in one flattened batch: a decode, a prefill continuation, a longer chunk
    caches = [primed(p) for p in prefixes]
    counts = [len(n) for n in news]
    batch_all = run(native, torch.cat(news), caches, counts, logits="all")
    assert [c.length for c in caches] == [
        len(p) + len(n) for p, n in zip(prefixes, news, strict=True)
    ]
    for c, p in zip(caches, prefixes, strict=True):
        c.length = len(p)
    batch_last = run(native, torch.cat(news), caches, counts, logits="last")
    assert batch_last.shape == (3, vocab)
    torch.testing.assert_close(batch_all, torch.cat(alone_all), **_tol(native))
    torch.testing.assert_close(batch_last, torch.stack(alone_last), **_tol(native))


def test_spec_and_state_dict_keys(pair) -> None:
    hf, native = pair
    hf_keys = set(hf.state_dict())
    own = set(native.state_dict())
    assert own == hf_keys
    spec = native.spec
    assert spec.n_layers == len(spec.windows)
    assert spec.eos_token_ids, "eos taken from the config"
    assert any(w is None for w in spec.windows)
    if spec.arch in ("gpt_neo", "gemma3"):  # these tiny configs mix global and windowed layers
        assert any(w is not None for w in spec.windows)
    pool = Arena(native).pool
    assert pool is not None and pool.k[0].shape[0] == spec.n_kv_heads
    assert pool.k[0].shape[-1] == spec.head_dim and len(pool.k) == spec.n_layers


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
def test_paged_attention_matches_naive_reference(window, softcap, n_kv, decode_path) -> None:
    """Scattered, shuffled blocks of 4; a fresh prefill, a decode, a continued prefill and a
    decode past several blocks, all in one call."""
    torch.manual_seed(0)
    n_heads, dim, bs = 4, 8, 4
    lengths, news = [0, 11, 3, 17], [9, 1, 6, 1]
    pool = KVPool(1, n_kv, dim, num_blocks=32, block_size=bs, dtype=torch.float32)
    pool.zero_blocks(range(32))
    order = torch.randperm(32).tolist()
    tables, qs, ks, vs, expected = [], [], [], [], []
    for length, t in zip(lengths, news, strict=True):
        n_blocks = -(-(length + t) // bs)
        table = [order.pop() for _ in range(n_blocks)]
        k_old, v_old = torch.randn(length, n_kv, dim), torch.randn(length, n_kv, dim)
        for p in range(length):  # the sequence's earlier K/V, where the block table says
            pool.k[0][:, table[p // bs], p % bs] = k_old[p]
            pool.v[0][:, table[p // bs], p % bs] = v_old[p]
        q, k, v = torch.randn(t, n_heads, dim), torch.randn(t, n_kv, dim), torch.randn(t, n_kv, dim)
        k_all, v_all = torch.cat([k_old, k]), torch.cat([v_old, v])
        expected.append(_naive_attention(q, k_all, v_all, length, 0.3, window, softcap))
        tables.append(table)
        qs.append(q), ks.append(k), vs.append(v)
    attn = AttentionMetadata.build(pool, tables, lengths, news)
    out = paged_attention(
        torch.cat(qs), torch.cat(ks), torch.cat(vs), attn, 0,
        scale=0.3, window=window, softcap=softcap,
    )  # fmt: skip
    want = torch.cat(expected).reshape(sum(news), n_heads * dim)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    # the new keys landed in their slots
    last = tables[1][11 // bs]
    torch.testing.assert_close(pool.k[0][:, last, 11 % bs], ks[1][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@torch.no_grad()
def test_cuda_forward_equals_cpu(pair) -> None:
    """The same model on a CUDA device (pool, metadata and all) gives the CPU logits."""
    import copy

    _, native = pair
    ids = _prompt(PROMPT_LEN, seed=4, vocab=native.spec.vocab_size)
    want = _full_logits(native, ids)
    cuda = copy.deepcopy(native).to("cuda")
    got = _full_logits(cuda, ids.to("cuda")).cpu()
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("fp32", [False, True])
@pytest.mark.parametrize("softcap", [None, 2.0])  # on the CPU: the flash kernel / the matmuls
def test_single_decode_reads_runs_of_blocks_in_place(window, fp32, softcap, decode_path) -> None:
    """One decoding sequence whose table has three runs of consecutive blocks (a cached
    prefix, its own blocks, a block elsewhere): attention over views equals the reference."""
    torch.manual_seed(1)
    n_kv, n_heads, dim, bs, length = 2, 4, 8, 4, 19
    pool = KVPool(1, n_kv, dim, num_blocks=16, block_size=bs, dtype=torch.float32)
    pool.zero_blocks(range(16))
    table = [9, 10, 3, 4, 12]
    k_all, v_all = torch.randn(length, n_kv, dim), torch.randn(length, n_kv, dim)
    for p in range(length - 1):
        pool.k[0][:, table[p // bs], p % bs] = k_all[p]
        pool.v[0][:, table[p // bs], p % bs] = v_all[p]
    q = torch.randn(1, n_heads, dim)
    attn = AttentionMetadata.build(pool, [table], [length - 1], [1])
    assert attn.single == table
    out = paged_attention(
        q, k_all[-1:], v_all[-1:], attn, 0, scale=0.3, window=window, softcap=softcap, fp32=fp32
    )
    want = _naive_attention(q, k_all, v_all, length - 1, 0.3, window, softcap)
    torch.testing.assert_close(out, want.reshape(1, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("consecutive", [True, False])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("window", [None, 10, 3])
def test_decodes_sharing_a_prefix_read_it_once(consecutive, softcap, window, decode_path) -> None:
    """Three decoding sequences whose tables start with the same blocks (a cached few-shot
    prefix): the cascade (shared keys read once for all queries) equals the reference."""
    torch.manual_seed(2)
    n_kv, n_heads, dim, bs = 2, 4, 8, 4
    pool = KVPool(1, n_kv, dim, num_blocks=32, block_size=bs, dtype=torch.float32)
    pool.zero_blocks(range(32))
    prefix = [3, 4, 5] if consecutive else [7, 2, 11]
    own = [[20, 21], [22], [24, 25, 26]]
    lengths = [19, 14, 23]  # positions before each sequence's new token
    prefix_k, prefix_v = torch.randn(12, n_kv, dim), torch.randn(12, n_kv, dim)
    tables, ks, vs, qs, expected = [], [], [], [], []
    for blocks, length in zip(own, lengths, strict=True):
        table = prefix + blocks
        k_all = torch.cat([prefix_k, torch.randn(length + 1 - 12, n_kv, dim)])
        v_all = torch.cat([prefix_v, torch.randn(length + 1 - 12, n_kv, dim)])
        for p in range(length):
            pool.k[0][:, table[p // bs], p % bs] = k_all[p]
            pool.v[0][:, table[p // bs], p % bs] = v_all[p]
        q = torch.randn(1, n_heads, dim)
        expected.append(_naive_attention(q, k_all, v_all, length, 0.3, window, softcap))
        tables.append(table)
        qs.append(q), ks.append(k_all[-1:]), vs.append(v_all[-1:])
    attn = AttentionMetadata.build(pool, tables, lengths, [1, 1, 1])
    out = paged_attention(
        torch.cat(qs), torch.cat(ks), torch.cat(vs), attn, 0,
        scale=0.3, softcap=softcap, window=window,
    )  # fmt: skip
    assert attn.decode is not None
    if decode_path == "torch":
        # window 3: every query's window starts past the shared blocks: no cascade needed
        assert (attn.decode.plans[window].shared is None) == (window == 3)
    else:  # the kernel reads every table in place: no gather plan at all
        assert not attn.decode.plans and window in attn.decode.native
    want = torch.cat(expected).reshape(3, n_heads * dim)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(native.load() is None, reason="no C compiler")
@pytest.mark.parametrize("n_kv", [1, 2])
def test_native_decode_equals_torch_on_a_bf16_pool(n_kv, monkeypatch) -> None:
    """bf16 K/V (what bf16 models and int8 on AMX keep): the kernel widens them exactly and
    keeps the probabilities in float32, the torch paths round them to bf16 as transformers does;
    both agree within that rounding. A sequence's result does not depend on its batch."""
    torch.manual_seed(5)
    n_heads, dim, bs = 4, 64, 16
    pool = KVPool(1, n_kv, dim, num_blocks=40, block_size=bs, dtype=torch.bfloat16)
    pool.k[0].normal_(), pool.v[0].normal_()
    tables = [[1, 2, 3, 10, 11], [1, 2, 3, 20], [1, 2, 3, 30, 31, 32]]
    lengths = [70, 55, 90]
    q = torch.randn(3, n_heads, dim)
    k, v = torch.randn(3, n_kv, dim), torch.randn(3, n_kv, dim)

    def attend(rows: list[int], window: int | None) -> torch.Tensor:
        attn = AttentionMetadata.build(
            pool, [tables[i] for i in rows], [lengths[i] for i in rows], [1] * len(rows)
        )
        return paged_attention(q[rows], k[rows], v[rows], attn, 0, window=window)

    for window in (None, 40):
        got = attend([0, 1, 2], window)
        alone = torch.cat([attend([i], window) for i in range(3)])
        assert torch.equal(got, alone)
        with monkeypatch.context() as m:
            m.setattr(attention, "_decode_kernel", lambda k_cache: None)
            want = attend([0, 1, 2], window)
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(native.load() is None, reason="no C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# AVX-512 (bf16 pools: 32 | D reads 32 values per load), AVX2 (8 | D), portable only
@pytest.mark.parametrize("dim", [160, 64, 48, 40, 12])
def test_native_decode_kernel_on_every_instruction_set(dtype, dim) -> None:
    """The kernel's AVX-512, AVX2 and portable variants (those this CPU runs) against a float64
    reference over the pool's own (possibly bf16) keys: GQA, a window, a softcap."""
    kernel, (k_cache, v_cache) = _kernel_and_pool(6, (2, 12, 16, dim), dtype)
    n_heads = 6
    tables = torch.tensor([[3, 7, 1, 9], [3, 7, 2, 0]])
    lo, hi = torch.tensor([0, 20], dtype=torch.int32), torch.tensor([61, 50], dtype=torch.int32)
    q = torch.randn(2, n_heads, dim)
    want = _decode_reference(q, k_cache, v_cache, tables, (lo, hi), 0.2, 3.0)
    for isa in _isas(kernel):
        got = native.Kernel(kernel.lib, isa).decode_attention(
            q, k_cache, v_cache, tables, (lo, hi), 0.2, 3.0
        )
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5, msg=isa)


@pytest.mark.skipif(native.load() is None, reason="no C compiler")
def test_native_decode_splits_a_long_context_exactly() -> None:
    """1,100 positions: three chunks computed apart (on any thread) and merged by their maxima
    and sums give the one-pass softmax, whatever the thread count."""
    torch.manual_seed(7)
    kernel = native.load()
    assert kernel is not None
    n_kv, n_heads, dim, bs = 1, 4, 32, 16
    k_cache, v_cache = torch.randn(n_kv, 80, bs, dim), torch.randn(n_kv, 80, bs, dim)
    table = torch.randperm(80)[:70][None]
    lo, hi = torch.tensor([30], dtype=torch.int32), torch.tensor([1100], dtype=torch.int32)
    q = torch.randn(1, n_heads, dim) * 3
    pos = torch.arange(30, 1100)
    slots = table[0][pos // bs] * bs + pos % bs
    k = k_cache.reshape(n_kv, -1, dim)[:, slots].double()
    v = v_cache.reshape(n_kv, -1, dim)[:, slots].double()
    want = torch.einsum("ht,td->hd", (q[0].double() @ k[0].T * 0.1).softmax(-1), v[0])
    got, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got.append(kernel.decode_attention(q, k_cache, v_cache, table, (lo, hi), 0.1, None))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got[0][0].double(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[0], got[1])


@pytest.mark.skipif(native.load() is None, reason="no C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n_kv", "cap"), [(1, None), (2, 5.0)])
def test_native_decode_splits_query_heads_over_threads_exactly(dtype, n_kv, cap) -> None:
    """One sequence over few KV heads (Gemma 3's one) gives fewer items than threads: its query
    heads split over the threads, each head's scores and sums still its own, so the result is
    bitwise the one-thread result, on every instruction set and thread count."""
    n_heads, dim = 4 * n_kv, 64
    kernel, (k_cache, v_cache) = _kernel_and_pool(9, (n_kv, 40, 16, dim), dtype)
    table = torch.randperm(40)[:25][None]
    lo, hi = torch.tensor([0], dtype=torch.int32), torch.tensor([389], dtype=torch.int32)
    q = torch.randn(1, n_heads, dim)
    want = _decode_reference(q, k_cache, v_cache, table, (lo, hi), 0.1, cap)
    before = torch.get_num_threads()
    try:
        for isa in _isas(kernel):
            k = native.Kernel(kernel.lib, isa)
            got = []
            for threads in (1, 2, 3, 4, 8):
                torch.set_num_threads(threads)
                got.append(k.decode_attention(q, k_cache, v_cache, table, (lo, hi), 0.1, cap))
            assert all(torch.equal(g, got[0]) for g in got[1:]), isa
            torch.testing.assert_close(got[0].double(), want, atol=1e-5, rtol=1e-5, msg=isa)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(native.load() is None, reason="no C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 40])
@pytest.mark.parametrize("window", [None, 200])
def test_native_decodes_sharing_blocks_compute_each_rows_bits_alone(dtype, dim, window) -> None:
    """Five decoding rows whose tables share leading blocks (a cached prefix, 600 positions:
    two chunks) are attended together, the shared keys read once for all rows and two rows at
    a time: every row's result is bitwise its result alone, on every instruction set and
    thread count, and the float64 reference's within rounding."""
    n_heads, nblk = 4, 80
    kernel, (k_cache, v_cache) = _kernel_and_pool(8, (2, nblk, 16, dim), dtype)
    shared = torch.randperm(nblk)[:38].tolist()  # 608 positions
    own = torch.randperm(nblk)[38:].tolist()
    lengths = [601, 630, 608, 700, 615]  # a row ending inside the shared blocks, one past them
    tables = [shared + own[6 * b : 6 * b + 6] for b in range(5)]
    tables[2] = shared[:35] + own[30:39]  # parts three blocks earlier
    table = torch.tensor(tables)
    hi = torch.tensor(lengths, dtype=torch.int32)
    lo = torch.zeros(5, dtype=torch.int32) if window is None else torch.clamp(hi - window, min=0)
    q = torch.randn(5, n_heads, dim)
    before = torch.get_num_threads()
    try:
        for isa in _isas(kernel):
            k = native.Kernel(kernel.lib, isa)
            rows = [(table[b : b + 1], (lo[b : b + 1], hi[b : b + 1])) for b in range(5)]
            alone = torch.cat(
                [
                    k.decode_attention(q[b : b + 1], k_cache, v_cache, t, ends, 0.1, None)
                    for b, (t, ends) in enumerate(rows)
                ]
            )
            for threads in (1, 2):
                torch.set_num_threads(threads)
                got = k.decode_attention(q, k_cache, v_cache, table, (lo, hi), 0.1, None)
                assert torch.equal(got, alone), (isa, threads)
    finally:
        torch.set_num_threads(before)
    want = _decode_reference(q, k_cache, v_cache, table, (lo, hi), 0.1, None)
    torch.testing.assert_close(alone.double(), want, atol=1e-5, rtol=1e-5)


def _kernel_and_pool(seed: int, shape: tuple[int, ...], dtype: torch.dtype):
    """The native kernel and a random K and V pool [Hkv, blocks, block size, D] in `dtype`."""
    torch.manual_seed(seed)
    kernel = native.load()
    assert kernel is not None
    return kernel, (torch.randn(shape).to(dtype), torch.randn(shape).to(dtype))


def _isas(kernel: native.Kernel) -> list[str]:
    """The instruction sets this CPU runs, up to the kernel's."""
    return [i for i in native.ISAS if native.ISAS[i] <= native.ISAS[kernel.isa]]


def _decode_reference(q, k_cache, v_cache, tables, bounds, scale, cap) -> torch.Tensor:
    """The decode attention of `Kernel.decode_attention` in float64 over the pool's own (possibly
    bf16) keys and values: q [B, Hq, D] -> [B, Hq, D]."""
    n_kv, _, bs, dim = k_cache.shape
    groups = q.shape[1] // n_kv
    lo, hi = bounds
    want = torch.empty(q.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        pos = torch.arange(int(lo[b]), int(hi[b]))
        slots = tables[b][pos // bs] * bs + pos % bs
        k = k_cache.reshape(n_kv, -1, dim)[:, slots].double().repeat_interleave(groups, 0)
        v = v_cache.reshape(n_kv, -1, dim)[:, slots].double().repeat_interleave(groups, 0)
        s = torch.einsum("hd,htd->ht", q[b].double(), k) * scale
        if cap is not None:
            s = cap * torch.tanh(s / cap)
        want[b] = torch.einsum("ht,htd->hd", s.softmax(-1), v)
    return want


@torch.no_grad()
def test_fixed_shape_step_equals_the_eager_step(dpair) -> None:
    """Steps padded to fixed shapes (3 sequences to a bucket of 4, each sequence's new tokens to
    a rows bucket, tables to a power of two, the padding in a scratch block; on CUDA a captured
    graph, replayed) give the eager step's logits and write the same K/V: decodes, then a step
    mixing a decode with chunks of 5 and 20 tokens (a few-shot query after its cached prefix),
    then decodes again."""
    _, native = dpair
    vocab = native.spec.vocab_size
    arena = Arena(native, blocks=128)  # no growth: the graphs hold the pool
    pool = arena.pool
    assert pool is not None
    scratch = arena.take(1)[0]  # block 0
    caches = []
    for i, n in enumerate((300, 5, 40)):
        caches.append(arena.new_cache())
        run(native, _prompt(n, seed=30 + i, vocab=vocab), caches[-1:], [n])
    graphs = StepGraphs(native, pool, scratch, max_batch=8, capture=native.device.type == "cuda")
    for step, counts in enumerate(([1, 1, 1], [1, 5, 20], [1, 1, 1])):
        tokens = _prompt(sum(counts), seed=40 + step, vocab=vocab).tolist()
        per_seq = [tokens[sum(counts[:i]) : sum(counts[: i + 1])] for i in range(3)]
        starts = [c.length for c in caches]
        before = pool.kv.clone()
        want = run(native, tokens, caches, counts)  # eager; each length + its count
        kv_want = pool.kv.clone()
        pool.kv.copy_(before)  # the fixed-shape step must write the new K/V itself
        got = graphs.run(per_seq, starts, [c.blocks for c in caches])
        assert got is not None
        torch.testing.assert_close(got, want, **_tol(native))
        # block 0 is the scratch block, written by the padding rows
        torch.testing.assert_close(pool.kv[:, :, :, 1:], kv_want[:, :, :, 1:], **_tol(native))
    assert pool is arena.pool and list(graphs.shapes) == [(4, 1, 32), (4, 32, 32)]
