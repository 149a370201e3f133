"""Prepacked bf16 linears (oneDNN layout): bitwise equal to F.linear, an MLP's activation fused as
a post-op, swapped in by LLM.load on the CPU for bf16 weights only, and the packed model computes
what the plain one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.engine.llm import LLM
from fewshot.models.loading import load_model
from fewshot.models.packed import PackedLinear, TiedHead, bucket_rows, can_pack, pack_linears
from fewshot.models.standalone import new_cache, run

pytestmark = pytest.mark.skipif(
    not can_pack(nn.Linear(2, 2).bfloat16()), reason="this CPU's oneDNN has no bf16 GEMM"
)


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_is_bitwise_f_linear(bias: bool) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(96, 200, bias=bias).bfloat16()
    packed = PackedLinear(lin)
    for rows in (1, 5, 40, 100, 341):  # more than 32 rows run padded to a bucket
        x = torch.randn(rows, 96).bfloat16()
        assert torch.equal(packed(x), F.linear(x, lin.weight, lin.bias))
    x = torch.randn(7, 96).bfloat16()
    assert torch.equal(packed(x)[:1], packed(x[:1]))  # a row does not depend on its batch


def test_rows_are_padded_to_a_few_buckets() -> None:
    got = [bucket_rows(m) for m in (1, 32, 33, 64, 65, 341, 512, 513, 1500, 2048)]
    assert got == [1, 32, 40, 64, 72, 352, 512, 576, 1536, 2048]
    assert len({bucket_rows(m) for m in range(33, 4097)}) == 52  # kernels oneDNN builds
    assert all(bucket_rows(m) <= m * 1.125 for m in range(64, 4097))


def test_only_bf16_cpu_linears_are_packed() -> None:
    model = nn.Sequential(nn.Linear(4, 4).bfloat16(), nn.Sequential(nn.Linear(4, 4).bfloat16()))
    assert pack_linears(model) == 2 and isinstance(model[1][0], PackedLinear)
    assert pack_linears(nn.Sequential(nn.Linear(4, 4))) == 0  # fp32 keeps F.linear


def test_a_tied_head_multiplies_the_shared_weight_without_a_copy() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"embed": nn.Embedding(300, 64), "lm_head": nn.Linear(64, 300, bias=False)}
    )
    model.bfloat16()
    model["lm_head"].weight = model["embed"].weight
    assert pack_linears(model) == 1
    head = model["lm_head"]
    assert isinstance(head, TiedHead) and head.weight is model["embed"].weight
    for shape in [(1, 64), (8, 64), (3, 5, 64), (64,), (41, 64)]:  # 41 rows: padded to 48
        x = torch.randn(*shape).bfloat16()
        got = head(x)
        assert got.shape == (*shape[:-1], 300) and got.is_contiguous()
        assert got.dtype == torch.float32  # the logits' dtype
        torch.testing.assert_close(got, F.linear(x, head.weight).float(), atol=0.02, rtol=0.01)
    x = torch.randn(7, 64).bfloat16()
    torch.testing.assert_close(head(x)[:1], head(x[:1]), atol=0.02, rtol=0.01)


def test_fused_activation_matches_the_unfused_mlp(tiny_gpt_neo_dir: Path) -> None:
    plain = load_model(str(tiny_gpt_neo_dir), dtype="bf16").model
    packed = load_model(str(tiny_gpt_neo_dir), dtype="bf16").model
    pack_linears(packed)
    mlp, ref_mlp = packed.transformer.h[0].mlp, plain.transformer.h[0].mlp
    assert isinstance(mlp.act, nn.Identity) and mlp.c_fc.post_op == "gelu"
    assert mlp.c_proj.post_op == "none"  # only the projection `act` follows is fused
    x = torch.randn(9, ref_mlp.c_fc.in_features).bfloat16()
    want = ref_mlp.c_proj(ref_mlp.act(ref_mlp.c_fc(x).float()).bfloat16()).float()
    torch.testing.assert_close(mlp(x).float(), want, atol=0.05, rtol=0.02)


def test_llm_on_packed_bf16_computes_what_the_plain_model_does(tiny_gpt_neo_dir: Path) -> None:
    prompt = "Few-shot learning in practice: GPT-Neo and the"
    plain = load_model(str(tiny_gpt_neo_dir), dtype="bf16")
    ids = plain.tokenizer.encode(prompt)
    want = run(plain.model, ids, [new_cache(plain.model)], [len(ids)], "all")
    with LLM.load(str(tiny_gpt_neo_dir), dtype="bf16", threads=1, kv_cache_mb=8) as llm:
        assert any(isinstance(m, PackedLinear) for m in llm.model.modules())
        assert llm.dtype == "bf16"
        assert llm.stats()["weight_bytes"] == plain.model.weight_bytes()  # packed, same bytes
        got = run(llm.model, ids, [new_cache(llm.model)], [len(ids)], "all")
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
        assert len(llm.generate(prompt, max_new_tokens=6).token_ids) == 6
