"""GPT-J, GPT-NeoX and GPT-2 beyond the parity tests: loading (directories, old checkpoint key
names, GGUF files written like llama.cpp's converter), int8, and the few-shot workload with prefix
cache hits through `LLM`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_helpers import save_with_tokenizer, write_gguf
from torch import nn

from fewshot.engine.llm import LLM
from fewshot.engine.types import SamplingParams
from fewshot.models.loading import load_model
from fewshot.models.quant import Int8Linear
from fewshot.models.registry import native_class
from fewshot.models.standalone import new_cache, run

FEW_SHOT = (
    "Translate English to French.\n"
    "English: sea otter\nFrench: loutre de mer\n"
    "English: peppermint\nFrench: menthe poivree\n"
    "English: plush giraffe\nFrench: girafe en peluche\n"
)


def _logits(model, ids: list[int]) -> torch.Tensor:
    return run(model, torch.tensor(ids), [new_cache(model)], [len(ids)], logits="all")


def _tiny_hf(arch: str) -> nn.Module:
    """A tiny random HF model with the real GPT-2 vocabulary, biases and norms randomised."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, vocab_size=50257)
        hf = GPT2LMHeadModel(cfg)
    else:
        cfg = GPTNeoXConfig(
            vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, rotary_pct=0.5, max_position_embeddings=128,
            use_parallel_residual=False, bos_token_id=50256, eos_token_id=50256,
        )  # fmt: skip
        hf = GPTNeoXForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return hf.eval()


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
@torch.no_grad()
def test_gguf_file_loads_natively(arch: str, gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    hf = _tiny_hf(arch)
    path = write_gguf(arch, hf, gpt2_tokenizer_dir, tmp_path / f"tiny-{arch}.gguf")
    lm = load_model(str(path), cache_dir=tmp_path / "cache")
    assert lm.native and isinstance(lm.model, native_class(arch))
    if arch == "gpt2":  # the converter's duplicated head is tied again
        assert lm.model.lm_head.weight is lm.model.transformer.wte.weight
    ids = lm.tokenizer.encode(FEW_SHOT)
    from transformers import AutoTokenizer

    assert ids == AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir))(FEW_SHOT)["input_ids"]
    want = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(_logits(lm.model, ids), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gptj", "gpt_neox"])
@torch.no_grad()
def test_directory_loads_natively(
    arch: str, model_pair_factory, gpt2_tokenizer_dir: Path, tmp_path: Path
) -> None:
    hf, _ = model_pair_factory(arch)
    save_with_tokenizer(hf, tmp_path, gpt2_tokenizer_dir)
    lm = load_model(str(tmp_path), cache_dir=tmp_path / "cache")
    assert lm.native and type(lm.model) is native_class(arch)
    ids = [int(i) for i in torch.randint(3, 999, (40,))]
    torch.testing.assert_close(
        _logits(lm.model, ids), hf(torch.tensor([ids])).logits[0], atol=1e-4, rtol=1e-4
    )


@torch.no_grad()
def test_old_checkpoint_key_names(model_pair_factory) -> None:
    """GPT-2 saved from the bare GPT2Model (no `transformer.` prefix, with its `attn.bias`
    buffers) and GPT-NeoX's pre-transformers-5 `embed_out.weight` both load."""
    ids = list(range(5, 60))
    for arch, rename in (
        ("gpt2", lambda k: k.removeprefix("transformer.")),
        ("gpt_neox", lambda k: "embed_out.weight" if k == "lm_head.weight" else k),
    ):
        hf, native = model_pair_factory(arch)
        sd = {rename(k): v for k, v in hf.state_dict().items()}
        if arch == "gpt2":
            sd.pop("lm_head.weight")
            sd["h.0.attn.bias"] = torch.ones(1, 1, 8, 8)
        fresh = type(native)(hf.config).eval()
        fresh.load_hf_state_dict(sd)
        torch.testing.assert_close(_logits(fresh, ids), _logits(native, ids))


@torch.no_grad()
def test_gpt2_int8_quantizes_every_projection(tiny_gpt2_dir: Path) -> None:
    """GPT-2's Conv1D layers are nn.Linear here, so int8 replaces all of them."""
    ref = load_model(str(tiny_gpt2_dir)).model
    q = load_model(str(tiny_gpt2_dir), dtype="int8").model
    names = [n for n, m in q.named_modules() if isinstance(m, Int8Linear)]
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert len(names) == 4 * ref.spec.n_layers + 1  # c_attn, c_proj, c_fc, mlp.c_proj; head
    ids = list(range(100, 180))
    want, got = _logits(ref, ids), _logits(q, ids)
    assert float((got - want).norm() / want.norm()) < 0.05


def test_gpt2_few_shot_prefix_hits(tiny_gpt2_dir: Path) -> None:
    """The few-shot pattern on a GPT-2 directory: prompts sharing a > 32-token prefix; the later
    ones hit the prefix cache and give the greedy tokens they give without it."""
    queries = ["English: cheese\nFrench:", "English: bread\nFrench:", "English: wine\nFrench:"]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    with LLM.load(str(tiny_gpt2_dir), threads=1, prefix_caching=False) as plain:
        assert plain.native and len(plain.encode(FEW_SHOT)) > 32
        expected = [plain.generate(FEW_SHOT + q, params).token_ids for q in queries]
    with LLM.load(str(tiny_gpt2_dir), threads=1, kv_cache_mb=16) as cached:
        results = [cached.generate(FEW_SHOT + q, params) for q in queries]
        stats = cached.stats()
    assert [r.token_ids for r in results] == expected
    assert results[0].cached_tokens == 0
    assert all(r.cached_tokens >= 32 for r in results[1:])
    assert stats["prefix_cache"]["hits"] >= 2
