"""The native layers (models/native_step.py) compute the eager path's bits: same logits, same
K/V written, for one decoding sequence, for decode batches with different lengths, sliding
windows and shared prefixes, for a decode beside a short prefill chunk, on a float32 and a bf16
pool."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from fewshot.models import native, native_step
from fewshot.models.attention_metadata import NATIVE_PREFILL_TOKENS, AttentionMetadata
from fewshot.models.kv_pool import KVPool
from fewshot.models.quant import quantize_model

KERNEL = native.load()
pytestmark = pytest.mark.skipif(
    KERNEL is None or KERNEL.gemv_rows == 0, reason="no native GEMV (no C compiler, or no AVX2)"
)

BS = 16
FUSED_ARCHS = ["gpt_neo", "llama", "gemma3"]


@pytest.fixture(scope="module", params=FUSED_ARCHS)
def int8_model(request, model_pair_factory):
    _, model = model_pair_factory(request.param)
    return quantize_model(copy.deepcopy(model)).eval()


def _pool(model, dtype: torch.dtype) -> KVPool:
    s = model.spec
    return KVPool(s.n_layers, s.n_kv_heads, s.head_dim, 64, BS, dtype)


def _forward(model, pool, tables, starts, counts, ids, fused: bool) -> torch.Tensor:
    attn = AttentionMetadata.build(pool, tables, starts, counts)
    positions = [p for s, c in zip(starts, counts, strict=True) for p in range(s, s + c)]
    rows = torch.tensor(attn.query_start[1:]) - 1
    model.fuse_layers = fused
    try:
        with torch.inference_mode():
            return model(torch.tensor(ids), torch.tensor(positions), attn, rows)
    finally:
        model.fuse_layers = True


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_fused_layers_is_the_eager_step(int8_model, kv_dtype) -> None:
    model = int8_model
    gen = torch.Generator().manual_seed(0)
    vocab = model.spec.vocab_size
    # three sequences sharing a two-block prefix, then their own blocks; contexts past the
    # tiny Gemma's 32-token window; one sequence alone as well (the single-sequence path)
    lengths = [40, 57, 70]
    prefix = torch.randint(0, vocab, (32,), generator=gen).tolist()
    prompts = [prefix + torch.randint(0, vocab, (n - 32,), generator=gen).tolist() for n in lengths]
    tables = [[0, 1, *range(2 + 4 * i, 6 + 4 * i)] for i in range(3)]
    pool = _pool(model, kv_dtype)
    for t in pool.k + pool.v:
        t.zero_()
    _forward(model, pool, tables, [0] * 3, lengths, sum(prompts, []), fused=False)  # prefill
    assert (
        model.fused_layers(torch.zeros(1, dtype=torch.float32), _decode_meta(pool, tables, lengths))
        is not None
    )
    suffix = torch.randint(0, vocab, (9,), generator=gen).tolist()
    for batch in ([0, 1, 2], [2], [0, 1]):
        steps = {}
        for fused in (False, True):
            p = copy.deepcopy(pool)
            ids = [prompts[i][-1] for i in batch]
            counts = [1] * len(batch)
            if batch == [
                0,
                1,
            ]:  # a decode beside a 9-token prefill chunk (a query after its prefix)
                ids, counts = [ids[0], *suffix], [1, len(suffix)]
            logits = []
            starts = [lengths[i] for i in batch]
            for _ in range(3):  # three steps: later ones read the K/V the fused step wrote
                out = _forward(model, p, [tables[i] for i in batch], starts, counts, ids, fused)
                logits.append(out)
                ids = out.argmax(-1).tolist()
                starts = [s + c for s, c in zip(starts, counts, strict=True)]
                counts = [1] * len(batch)
            steps[fused] = (torch.stack(logits), p)
        (eager, pool_e), (fused_logits, pool_f) = steps[False], steps[True]
        assert torch.equal(eager, fused_logits), (eager - fused_logits).abs().max()
        assert all(
            torch.equal(a, b) for a, b in zip(pool_e.k + pool_e.v, pool_f.k + pool_f.v, strict=True)
        )


def _decode_meta(pool, tables, lengths) -> AttentionMetadata:
    return AttentionMetadata.build(pool, tables, lengths, [1] * len(lengths))


def test_fused_layers_needs_int8_weights(model_pair_factory) -> None:
    _, model = model_pair_factory("gpt_neo")  # float32 weights: the eager path only
    pool = _pool(model, torch.float32)
    assert model.fused_layers(torch.zeros(1, 64), _decode_meta(pool, [[0, 1]], [20])) is None


def test_long_prefill_chunks_are_not_fused(int8_model) -> None:
    pool = _pool(int8_model, torch.float32)
    long = NATIVE_PREFILL_TOKENS + 1  # attended by SDPA over gathered blocks
    attn = AttentionMetadata.build(pool, [list(range(6)), [8, 9]], [0, 20], [long, 1])
    assert int8_model.fused_layers(torch.zeros(long + 1, 64), attn) is None
    short = NATIVE_PREFILL_TOKENS - 1  # with the decode: 64 rows, within even AVX2's GEMV
    attn = AttentionMetadata.build(pool, [list(range(6)), [8, 9]], [0, 20], [short, 1])
    assert int8_model.fused_layers(torch.zeros(short + 1, 64), attn) is not None


def test_a_layer_description_that_does_not_fit_stays_eager(int8_model) -> None:
    # the C code writes by the described sizes: a mismatch must never reach it
    desc = int8_model.decode_layers()
    assert native_step.FusedLayers.build(desc) is not None
    desc.inner += 16
    assert native_step.FusedLayers.build(desc) is None


def test_projections_of_one_input_run_as_one_gemv(int8_model) -> None:
    """q, k and v (and a gated MLP's gate and up) are stored one after the other and run as one
    GEMV whose parts go to their own outputs; each module's weight is a view of that storage (no
    second copy), and building the step again reuses it."""
    desc = int8_model.decode_layers()
    step = native_step.FusedLayers.build(desc)
    assert step is not None
    for layer, d in zip(step.layers, desc.layers, strict=True):
        assert layer.qkv == 1
        assert layer.q.N == d.q.out_features + d.k.out_features + d.v.out_features
        storage = d.q.packed.data._base
        assert storage is not None and layer.q.q == storage.data_ptr()
        assert all(m.packed.data._base is storage for m in (d.k, d.v))
        assert layer.gate_up == (d.w3 is not None)
        if d.w3 is not None:
            assert layer.w1.N == d.w1.out_features + d.w3.out_features
            assert d.w3.packed.data._base is d.w1.packed.data._base
    again = native_step.FusedLayers.build(desc)
    assert again is not None
    assert [layer.q.q for layer in again.layers] == [layer.q.q for layer in step.layers]


def test_the_native_layers_time_their_parts(int8_model) -> None:
    """fs_run_layers adds each part's time to totals that `step_phases` reads and resets: every
    call and row counted, each part's time within the calls' wall time, the GEMVs and the
    attention measured."""
    model = int8_model
    pool = _pool(model, torch.float32)
    tables, lengths = [[0, 1, 2], [3, 4, 5]], [20, 33]
    ids = torch.randint(0, model.spec.vocab_size, (sum(lengths),)).tolist()
    _forward(model, pool, tables, [0, 0], lengths, ids, fused=False)  # prefill (eager)
    assert KERNEL is not None
    native_step.step_phases(KERNEL)  # discard earlier calls
    t0 = time.perf_counter()
    for step in range(3):
        starts = [n + step for n in lengths]
        _forward(model, pool, tables, starts, [1, 1], ids[:2], fused=True)
    wall = time.perf_counter() - t0
    got = native_step.step_phases(KERNEL)
    assert (got.calls, got.rows) == (3, 6)
    assert set(got.seconds) == set(native_step.STEP_PHASES)
    assert 0 < got.total <= wall
    for part in ("q/k/v projection", "attention", "MLP down projection"):
        assert got.seconds[part] > 0, part
    assert native_step.step_phases(KERNEL).calls == 0  # read resets
