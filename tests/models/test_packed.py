"""Prepacked bf16 linears (oneDNN layout): bitwise equal to F.linear, swapped in by LLM.load on
the CPU for bf16 weights only, and an engine on them generates what the plain model does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.engine.llm import LLM
from fewshot.models.loading import load_model
from fewshot.models.packed import PackedLinear, can_pack, pack_linears

pytestmark = pytest.mark.skipif(
    not can_pack(nn.Linear(2, 2).bfloat16()), reason="this CPU's oneDNN has no bf16 GEMM"
)


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_is_bitwise_f_linear(bias: bool) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(96, 200, bias=bias).bfloat16()
    packed = PackedLinear(lin)
    for rows in (1, 5, 40):
        x = torch.randn(rows, 96).bfloat16()
        assert torch.equal(packed(x), F.linear(x, lin.weight, lin.bias))
    x = torch.randn(7, 96).bfloat16()
    assert torch.equal(packed(x)[:1], packed(x[:1]))  # a row does not depend on its batch


def test_only_bf16_cpu_linears_are_packed() -> None:
    model = nn.Sequential(nn.Linear(4, 4).bfloat16(), nn.Sequential(nn.Linear(4, 4).bfloat16()))
    assert pack_linears(model) == 2 and isinstance(model[1][0], PackedLinear)
    assert pack_linears(nn.Sequential(nn.Linear(4, 4))) == 0  # fp32 keeps F.linear


def test_llm_on_packed_bf16_generates_what_the_plain_model_does(tiny_gpt_neo_dir: Path) -> None:
    prompt = "Few-shot learning in practice: GPT-Neo and the"
    plain = load_model(str(tiny_gpt_neo_dir), dtype="bf16")
    with LLM.from_model(plain.model, plain.tokenizer, threads=1, kv_cache_mb=8) as ref:
        want = ref.generate(prompt, max_new_tokens=12).token_ids
    with LLM.load(str(tiny_gpt_neo_dir), dtype="bf16", threads=1, kv_cache_mb=8) as llm:
        assert any(isinstance(m, PackedLinear) for m in llm.model.modules())
        assert llm.dtype == "bf16"
        assert llm.generate(prompt, max_new_tokens=12).token_ids == want
