"""int8: accuracy of Int8Linear, a quantized tiny GPT-Neo, batch invariance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.models import native
from fewshot.models.packed_weight import PACK_ROWS, PackedWeight
from fewshot.models.quant import Int8Linear, auto_kv_dtype, cast_model, quantize_model
from fewshot.models.standalone import Arena, new_cache, run


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


NATIVE = native.load()
# the native kernel on every instruction set this CPU runs (AVX-512 hosts also run the AVX2
# and C variants), and torch's reference path (None)
KERNELS = [None] + (
    []
    if NATIVE is None
    else [
        native.Kernel(NATIVE.lib, isa)
        for isa in native.ISAS
        if native.ISAS[isa] <= native.ISAS[NATIVE.isa]
    ]
)
KERNEL_IDS = ["reference" if k is None else k.isa for k in KERNELS]


def test_native_kernel_builds_here() -> None:
    # CI and development machines have a C compiler: the fast path must not silently vanish
    assert NATIVE is not None and NATIVE.isa in ("amx", "avx512vnni", "avx512", "avx2")


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("shape", [(128, 96), (200, 96), (100, 70), (770, 33)])
@torch.no_grad()
def test_int8_linear_close_to_float(kernel: native.Kernel | None, shape) -> None:
    torch.manual_seed(0)
    in_features, out_features = shape
    linear = nn.Linear(in_features, out_features)
    linear.weight.data[:, 3] *= 30  # an outlier input column: per-group scales keep the rest
    q = Int8Linear.from_linear(linear, kernel=kernel)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (out_features, in_features)
    assert q.scales.shape == (out_features, -(-in_features // q.group))
    deq = q.dequantized()
    g = q.group  # the groups without the outlier column:
    assert _rel_err(deq[:, g:], linear.weight[:, g:]) < 0.01
    for rows in (1, 3, 9, 40, 70):  # the GEMV (<= gemv_rows) and the dequantize-then-GEMM paths
        x = torch.randn(rows, in_features)
        want = nn.functional.linear(x, deq, linear.bias)
        if kernel is None or rows > kernel.gemv_rows:  # the dequantized weight, float sums
            torch.testing.assert_close(q(x), want)
        else:  # the GEMV's int16 activations: within half a step of each group's grid
            err = (q(x).double() - want.double()).abs()
            assert (err <= _activation_bound(x, deq, q.group) + 1e-5 * want.abs()).all()
        assert _rel_err(q(x), linear(x)) < 0.05  # the outlier group rounds coarser
    x = torch.randn(5, 3, in_features)
    cast_model(q, torch.bfloat16)
    got = q(x.bfloat16())
    assert q.weight.dtype == torch.int8 and got.dtype == torch.bfloat16
    assert got.shape == (5, 3, out_features)
    assert _rel_err(got, linear(x)) < 0.06


def _activation_bound(x: torch.Tensor, deq: torch.Tensor, group: int) -> torch.Tensor:
    """The most the GEMV's rounding of x [M, K] to int16 per group (a step of max|x_g| / 32767)
    can move x @ deq^T: sum over groups of |deq_g|_1 * step_g / 2."""
    k = x.shape[1]
    pad = -k % group
    xg = nn.functional.pad(x.double(), (0, pad)).view(len(x), -1, group)
    half_step = xg.abs().amax(-1) / 32767 / 2  # [M, groups]
    wg = nn.functional.pad(deq.double().abs(), (0, pad)).view(len(deq), -1, group).sum(-1)
    return half_step @ wg.t()  # [M, N]


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
@torch.no_grad()
def test_gemv_is_the_same_on_every_instruction_set() -> None:
    # every variant computes the same integer group sums and float steps: bitwise equal results,
    # for every tile shape (AVX-512 runs tiles of 8 rows, then one of the remaining 1-7; AVX2
    # tiles of 4, then one of 1-3; AMX tiles of 16 rows, then one of the rest, from 9 rows on)
    torch.manual_seed(4)
    for in_features, out_features in ((96, 64), (770, 37), (48, 5)):
        q = Int8Linear.from_linear(nn.Linear(in_features, out_features), kernel=NATIVE)
        x = torch.randn(41, in_features) * torch.logspace(-2, 2, 41)[:, None]
        assert NATIVE is not None
        for rows in [*range(1, 18), 23, 24, 25, 32, 33, 41]:
            got = {isa: NATIVE.gemv(x[:rows], q.packed, q.bias, isa=isa) for isa in KERNEL_IDS[1:]}
            first = got[NATIVE.isa]
            assert all(torch.equal(first, y) for y in got.values()), (rows, list(got))


def test_groups_are_finer_than_rows() -> None:
    # one large weight per row spoils a per-row grid, not a per-group one
    torch.manual_seed(3)
    w = torch.randn(64, 512) * 0.02
    w[:, 0] = 2.0
    grouped = Int8Linear.from_float(w)
    per_row = Int8Linear.from_float(w, group=512).dequantized()
    g = grouped.group  # the columns past the outlier's group
    assert _rel_err(grouped.dequantized()[:, g:], w[:, g:]) * 20 < _rel_err(
        per_row[:, g:], w[:, g:]
    )


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k is not None], ids=KERNEL_IDS[1:])
@torch.no_grad()
def test_int8_linear_rows_do_not_depend_on_batch(kernel: native.Kernel) -> None:
    torch.manual_seed(1)
    q = Int8Linear.from_linear(nn.Linear(48, 80), kernel=kernel)
    rows = min(kernel.gemv_rows, 80) or 1
    x = torch.randn(rows, 48) * torch.logspace(-3, 3, rows)[:, None]  # very different scales
    batch = q(x)
    for i in range(rows):
        assert torch.equal(q(x[i : i + 1])[0], batch[i])
    assert torch.equal(q(x[rows // 3 : rows // 2 + 1]), batch[rows // 3 : rows // 2 + 1])


def test_group_is_validated() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        Int8Linear.from_float(torch.randn(4, 40), group=24)


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@torch.no_grad()
def test_rescored_head_is_exact_at_the_top(kernel: native.Kernel | None) -> None:
    torch.manual_seed(2)
    emb = torch.randn(250, 32)
    emb = torch.cat([emb, emb + 1e-3 * torch.randn(250, 32)])  # near-ties for the argmax
    head = Int8Linear.from_float(emb, exact=emb, kernel=kernel)
    plain = Int8Linear.from_float(emb, kernel=kernel)
    x = torch.randn(64, 32) * torch.linspace(0.01, 3, 64)[:, None]
    want = x @ emb.t()
    got = head(x)
    best = want.argmax(-1)
    assert torch.equal(got.argmax(-1), best)  # guaranteed by the error bound
    torch.testing.assert_close(got.gather(-1, best[:, None]), want.gather(-1, best[:, None]))
    assert not torch.equal(plain(x).argmax(-1), best)  # without rescoring some rows flip
    if kernel is not None:  # the GEMV's rows do not depend on the batch, rescored ones neither
        small = head(x[: kernel.gemv_rows or 1])
        for i in range(len(small)):
            assert torch.equal(head(x[i : i + 1])[0], small[i])


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
@torch.no_grad()
def test_native_rescore_is_the_reference_one() -> None:
    """fs_rescore (bf16 exact rows, a bias) rescores what the torch path does, to float
    rounding; on a flat top (every output qualifies) it takes the RESCORE_CAP largest."""
    assert NATIVE is not None
    torch.manual_seed(4)
    for dim, dtype in ((48, torch.bfloat16), (45, torch.bfloat16), (45, torch.float32)):
        emb = torch.randn(300, dim)  # 45: the dot products' vector tails
        bias = torch.randn(300) * 0.1
        x = torch.randn(5, dim)
        got = Int8Linear.from_float(emb, bias, exact=emb.to(dtype), kernel=NATIVE)(x)
        want = Int8Linear.from_float(emb, bias, exact=emb.to(dtype), kernel=None)(x)
        best = want.argmax(-1)
        assert torch.equal(got.argmax(-1), best)
        torch.testing.assert_close(got.gather(-1, best[:, None]), want.gather(-1, best[:, None]))
    y = torch.rand(2, 1000)
    before = y.clone()
    for isa in [i for i in native.ISAS if native.ISAS[i] <= native.ISAS[NATIVE.isa]]:
        y = before.clone()
        native.Kernel(NATIVE.lib, isa).rescore(
            y, torch.ones(2, 16), torch.zeros(1000, 16), torch.ones(1000), None, 64
        )  # every output within the error bound: the 64 largest become exact_j . x = 0
        for row in range(2):
            changed = set((y[row] != before[row]).nonzero()[:, 0].tolist())
            assert changed == set(before[row].topk(64).indices.tolist()), isa


@pytest.fixture(scope="module")
def gpt_neo_float_and_int8(model_pair_factory):
    _, floaty = model_pair_factory("gpt_neo")
    _, quantized = model_pair_factory("gpt_neo")
    quantize_model(quantized)
    return floaty, quantized


def test_quantize_model_swaps_linears(gpt_neo_float_and_int8) -> None:
    floaty, quantized = gpt_neo_float_and_int8
    n_linear = sum(isinstance(m, nn.Linear) for m in floaty.modules())
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert sum(isinstance(m, Int8Linear) for m in quantized.modules()) == n_linear
    # the tied input embedding is kept in bf16 and hands float32 rows to the stream
    wte = quantized.transformer.wte
    assert wte.weight.dtype == torch.bfloat16
    assert wte(torch.tensor([1, 2])).dtype == torch.float32
    # the tied head rescores from the embedding
    assert quantized.lm_head.exact is wte.weight
    # weight bytes: every storage once (the tied embedding is not counted again by the head)
    params = sum(p.nbytes for p in floaty.parameters()) + sum(b.nbytes for b in floaty.buffers())
    assert floaty.weight_bytes() == params
    linears = [m for m in quantized.modules() if isinstance(m, Int8Linear)]
    others = sum(p.nbytes for p in quantized.parameters()) + sum(
        b.nbytes for b in quantized.buffers()
    )
    assert quantized.weight_bytes() == others + sum(m.packed.nbytes for m in linears)
    assert quantized.weight_bytes() < params / 2


@torch.no_grad()
def test_quantized_gpt_neo_agrees(gpt_neo_float_and_int8) -> None:
    floaty, quantized = gpt_neo_float_and_int8
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, floaty.spec.vocab_size - 1, (300,), generator=gen)
    want = run(floaty, ids, [new_cache(floaty)], [len(ids)], logits="all")
    got = run(quantized, ids, [new_cache(quantized)], [len(ids)], logits="all")
    top1 = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
    # a random model's next-token distribution is nearly flat, so this is a floor (the previous
    # 7-bit-activation int8 got ~85% here); real weights: `python -m fewshot.bench.agreement`
    assert top1 >= 0.95, f"teacher-forced top-1 agreement {top1:.3f}"
    # greedy continuations of 8 prompts, decoded as one flattened batch
    prompts = [torch.randint(0, floaty.spec.vocab_size - 1, (40,), generator=gen) for _ in range(8)]
    runs = [_greedy_batch(model, prompts, steps=5) for model in (floaty, quantized)]
    tokens = torch.tensor(runs[0]) == torch.tensor(runs[1])  # [8, 5]
    assert tokens.float().mean() >= 0.8, runs


def _greedy_batch(model, prompts: list[torch.Tensor], steps: int) -> list[list[int]]:
    arena = Arena(model)
    caches = [arena.new_cache() for _ in prompts]
    logits = run(model, torch.cat(prompts), caches, [len(p) for p in prompts])  # [B, vocab]
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(steps):
        toks = logits.argmax(-1)  # [B]
        for row, tok in zip(out, toks.tolist(), strict=True):
            row.append(tok)
        logits = run(model, toks, caches, [1] * len(prompts))
    return out


@torch.no_grad()
def test_quantized_row_independent_of_batch(gpt_neo_float_and_int8) -> None:
    _, quantized = gpt_neo_float_and_int8
    vocab = quantized.spec.vocab_size
    gen = torch.Generator().manual_seed(6)
    prefixes = [torch.randint(0, vocab - 1, (n,), generator=gen) for n in (270, 3, 40, 17)]
    new = torch.randint(0, vocab - 1, (4,), generator=gen)

    arena = Arena(quantized)

    def primed(prefix: torch.Tensor):
        cache = arena.new_cache()
        run(quantized, prefix, [cache], [len(prefix)])
        return cache

    # each row next to one short companion (a lone decode takes attention's single-sequence
    # path, whose float sums differ in the last bits: this test is about the int8 GEMM)
    companion = torch.tensor([7])
    alone = [
        run(quantized, torch.cat([new[i : i + 1], companion]), [primed(p), primed(companion)],
            [1, 1])[0]
        for i, p in enumerate(prefixes)
    ]  # fmt: skip
    batch = run(quantized, new, [primed(p) for p in prefixes], [1, 1, 1, 1])
    for i in range(4):
        assert torch.equal(batch[i], alone[i]), f"row {i} changed with the batch"


def test_without_a_compiler_the_reference_path_is_used(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert native._build(tmp_path) is None
    layer = nn.Linear(40, 24)
    q = Int8Linear.from_linear(layer, kernel=None)
    x = torch.randn(3, 40)
    torch.testing.assert_close(q(x), nn.functional.linear(x, q.dequantized(), layer.bias))


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
def test_a_toolchain_without_amx_still_builds_the_kernels(tmp_path, monkeypatch) -> None:
    # an assembler older than AMX fails the first build: the second leaves the tiles out
    real, tried = native.subprocess.run, []

    def run(cmd, *args, **kwargs):
        if "-o" in cmd:
            tried.append("-DFS_NO_AMX" in cmd)
            if not tried[-1]:
                return native.subprocess.CompletedProcess(cmd, 1, "", "no such instruction")
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(native.subprocess, "run", run)
    path = native._build(tmp_path)
    assert path is not None and tried == [False, True]
    kernel = native._open(path)
    assert kernel.isa != "amx" and kernel.lib.fs_amx() == 0
    q = Int8Linear.from_float(torch.randn(48, 128), kernel=kernel)
    x = torch.randn(20, 128)
    assert NATIVE is not None
    assert torch.equal(kernel.gemv(x, q.packed, None), NATIVE.gemv(x, q.packed, None))


def test_packing_round_trips() -> None:
    q = torch.randint(-127, 128, (7, 50), dtype=torch.int8)
    scales = torch.arange(14.0).view(7, 2)
    packed = PackedWeight.pack(q, scales, 32)
    assert packed.data.numel() == 16 * 64 and packed.scales.shape == (1, 2, 16)  # 16-row blocks
    assert torch.equal(packed.unpack(), q)
    assert torch.equal(packed.row_scales(), scales)
    tall = torch.randint(-127, 128, (PACK_ROWS + 3, 40), dtype=torch.int8)  # two slices
    assert torch.equal(PackedWeight.pack(tall, torch.ones(len(tall), 1), 48).unpack(), tall)


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k is not None], ids=KERNEL_IDS[1:])
@torch.no_grad()
def test_dequantize_then_gemm_path(kernel: native.Kernel) -> None:
    # the path past gemv_rows: the weight dequantized (transposed) a slice at a time
    torch.manual_seed(6)
    for in_features, out_features in ((96, 64), (770, 37)):
        q = Int8Linear.from_linear(nn.Linear(in_features, out_features), kernel=kernel)
        x = torch.randn(5, in_features)
        want = nn.functional.linear(x, q.dequantized(), q.bias)
        torch.testing.assert_close(kernel.gemm(x, q.packed, q.bias), want)


@pytest.mark.parametrize("dim", [640, 37])  # a multiple of 16, and a tail
def test_native_rms_norm_matches_torch(dim: int) -> None:
    torch.manual_seed(4)
    x, w = torch.randn(5, dim), torch.randn(dim) * 0.1
    for offset in (0.0, 1.0):  # Llama's weight, Gemma's (1 + weight)
        got = NATIVE.rms_norm(x, w, offset, 1e-6)
        want = torch.nn.functional.rms_norm(x, (dim,), offset + w, eps=1e-6)
        torch.testing.assert_close(got, want)


def test_int8_kv_cache_is_bf16_where_the_cpu_or_the_kernels_read_it(
    gpt_neo_float_and_int8,
) -> None:
    floaty, quantized = gpt_neo_float_and_int8
    amx = {"amx_bf16": True, "amx_tile": True}
    assert auto_kv_dtype(quantized, amx, kernels=False) == torch.bfloat16
    zen4 = {"avx2": True, "avx512_bf16": True}
    assert auto_kv_dtype(quantized, zen4, kernels=False) == torch.bfloat16
    assert auto_kv_dtype(quantized, {"avx2": True}, kernels=True) == torch.bfloat16  # native
    assert auto_kv_dtype(quantized, {"avx2": True}, kernels=False) == torch.float32  # torch's
    assert auto_kv_dtype(floaty, amx) == torch.float32  # float weights keep their own dtype


def test_an_unwritable_kernel_cache_falls_back(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert native._build(blocked / "kernels") is None  # mkdir fails: a warning, no crash


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
def test_kernel_isa_caps_the_instruction_set(monkeypatch) -> None:
    monkeypatch.setitem(native._loaded, "kernel", NATIVE)  # restored when the test ends
    assert native.load(isa="c").isa == "c"
    assert native.load().isa == "c"  # the cap holds for every later caller
    assert native.load(isa="amx").isa == NATIVE.isa  # never above what the CPU runs
    with pytest.raises(ValueError, match="isa"):
        native.load(isa="neon")
