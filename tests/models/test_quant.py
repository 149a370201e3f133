"""int8: accuracy of Int8Linear, a quantized tiny GPT-Neo, batch invariance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.models.quant import Int8Linear, cast_model, quantize_model
from fewshot.models.standalone import Arena, new_cache, run


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("in_features", [64, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_int8_linear_close_to_float(in_features: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 96)
    x = torch.randn(5, 3, in_features)
    want = linear(x)
    q = Int8Linear.from_linear(linear)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (96, in_features)
    cast_model(q, dtype)
    assert q.weight.dtype == torch.int8
    got = q(x.to(dtype))
    assert got.dtype == dtype and got.shape == (5, 3, 96)
    # int8 weights (~0.5%) and 7-bit per-row activations (~1.5% on Gaussian inputs)
    assert _rel_err(got, want) < (0.03 if dtype == torch.float32 else 0.04)


@pytest.mark.parametrize("in_features", [64, 40])
@torch.no_grad()
def test_int8_linear_rows_do_not_depend_on_batch(in_features: int) -> None:
    torch.manual_seed(1)
    q = Int8Linear.from_linear(nn.Linear(in_features, 80))
    x = torch.randn(4, in_features)
    batch = q(x)
    for i in range(4):
        assert torch.equal(q(x[i : i + 1])[0], batch[i])


@pytest.fixture(scope="module")
def gpt_neo_float_and_int8(model_pair_factory):
    _, native = model_pair_factory("gpt_neo")
    _, quantized = model_pair_factory("gpt_neo")
    quantize_model(quantized)
    return native, quantized


def test_quantize_model_swaps_linears(gpt_neo_float_and_int8) -> None:
    native, quantized = gpt_neo_float_and_int8
    n_linear = sum(isinstance(m, nn.Linear) for m in native.modules())
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert sum(isinstance(m, Int8Linear) for m in quantized.modules()) == n_linear
    # the input embedding stays float (and is the model's first parameter: KV cache dtype)
    assert quantized.transformer.wte.weight.dtype == torch.float32
    assert quantized.kv_dtype == torch.float32


@torch.no_grad()
def test_quantized_gpt_neo_mostly_agrees(gpt_neo_float_and_int8) -> None:
    native, quantized = gpt_neo_float_and_int8
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, native.spec.vocab_size - 1, (300,), generator=gen)
    want = run(native, ids, [new_cache(native)], [len(ids)], logits="all")
    got = run(quantized, ids, [new_cache(quantized)], [len(ids)], logits="all")
    top1 = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert top1 > 0.85, f"teacher-forced top-1 agreement {top1:.3f}"
    # greedy continuations of 8 prompts, decoded as one flattened batch
    prompts = [torch.randint(0, native.spec.vocab_size - 1, (40,), generator=gen) for _ in range(8)]
    runs = [_greedy_batch(model, prompts, steps=5) for model in (native, quantized)]
    first = sum(a[0] == b[0] for a, b in zip(*runs, strict=True)) / len(prompts)
    tokens = torch.tensor(runs[0]) == torch.tensor(runs[1])  # [8, 5]
    assert first >= 0.75 and tokens.float().mean() >= 0.5, runs


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

    alone = [run(quantized, new[i : i + 1], [primed(p)], [1])[0] for i, p in enumerate(prefixes)]
    batch = run(quantized, new, [primed(p) for p in prefixes], [1, 1, 1, 1])
    for i in range(4):
        assert torch.equal(batch[i], alone[i]), f"row {i} changed with the batch"
