"""Tiny random models of each native family, paired with transformers' own implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_helpers import save_with_tokenizer
from transformers import (
    Gemma3ForCausalLM as HFGemma3,
)
from transformers import (
    Gemma3TextConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
)
from transformers import (
    GPT2LMHeadModel as HFGPT2,
)
from transformers import (
    GPTJForCausalLM as HFGPTJ,
)
from transformers import (
    GPTNeoForCausalLM as HFGPTNeo,
)
from transformers import (
    GPTNeoXForCausalLM as HFGPTNeoX,
)
from transformers import (
    LlamaForCausalLM as HFLlama,
)

from fewshot.models.base import CausalLM

VOCAB = 1000


def gpt_neo_config() -> GPTNeoConfig:
    return GPTNeoConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        attention_types=[[["global", "local"], 2]],
        window_size=256,  # as in the real model; the tests use contexts > 256
        max_position_embeddings=512,
        activation_function="gelu_new",
        initializer_range=0.1,
        eos_token_id=VOCAB - 1,
        bos_token_id=VOCAB - 1,
    )


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        initializer_range=0.1,
        eos_token_id=2,
        bos_token_id=1,
    )


def gemma3_config(softcap: bool = False) -> Gemma3TextConfig:
    """Tiny Gemma 3; `softcap` adds final-logit softcapping (and an attention softcap, which
    transformers' Gemma 3 ignores, as must we)."""
    return Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=1024,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        query_pre_attn_scalar=32,
        initializer_range=0.1,
        eos_token_id=1,
        bos_token_id=2,
        pad_token_id=0,
        attn_logit_softcapping=2.0 if softcap else None,
        final_logit_softcapping=3.0 if softcap else None,
    )


def gptj_config() -> GPTJConfig:
    """Tiny GPT-J: rotary on 6 of 16 head dims (interleaved pairs), untied head with bias."""
    return GPTJConfig(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        rotary_dim=6,
        n_positions=512,
        activation_function="gelu_new",
        initializer_range=0.1,
        eos_token_id=VOCAB - 1,
        bos_token_id=VOCAB - 1,
    )


def gpt_neox_config(parallel: bool = True) -> GPTNeoXConfig:
    """Tiny GPT-NeoX (Pythia-like): rotary on a quarter of the head dims."""
    return GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        rotary_pct=0.25,
        max_position_embeddings=512,
        use_parallel_residual=parallel,
        hidden_act="gelu",
        initializer_range=0.1,
        eos_token_id=0,
        bos_token_id=0,
    )


def gpt2_config() -> GPT2Config:
    """Tiny GPT-2 with per-layer attention scaling (1 / (layer + 1)) switched on."""
    return GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=3,
        n_head=4,
        n_positions=512,
        scale_attn_by_inverse_layer_idx=True,
        initializer_range=0.1,
        eos_token_id=VOCAB - 1,
        bos_token_id=VOCAB - 1,
    )


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """HF initialises norm weights and biases to constants; make them random so they are
    really tested (e.g. the per-head layout of GPT-NeoX's fused QKV bias)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def make_pair(arch: str) -> tuple[torch.nn.Module, CausalLM]:
    """(transformers model, native model) with the same random weights, eval mode, fp32."""
    torch.manual_seed(0)
    if arch == "gpt_neo":
        from fewshot.models.gpt_neo import GPTNeoForCausalLM

        config, hf_cls, native_cls = gpt_neo_config(), HFGPTNeo, GPTNeoForCausalLM
    elif arch == "llama":
        from fewshot.models.llama import LlamaForCausalLM

        config, hf_cls, native_cls = llama_config(), HFLlama, LlamaForCausalLM
    elif arch in ("gemma3", "gemma3_softcap"):
        from fewshot.models.gemma3 import Gemma3ForCausalLM

        config = gemma3_config(softcap=arch == "gemma3_softcap")
        hf_cls, native_cls = HFGemma3, Gemma3ForCausalLM
    elif arch == "gptj":
        from fewshot.models.gptj import GPTJForCausalLM

        config, hf_cls, native_cls = gptj_config(), HFGPTJ, GPTJForCausalLM
    elif arch in ("gpt_neox", "gpt_neox_sequential"):
        from fewshot.models.gpt_neox import GPTNeoXForCausalLM

        config = gpt_neox_config(parallel=arch == "gpt_neox")
        hf_cls, native_cls = HFGPTNeoX, GPTNeoXForCausalLM
    elif arch == "gpt2":
        from fewshot.models.gpt2 import GPT2LMHeadModel

        config, hf_cls, native_cls = gpt2_config(), HFGPT2, GPT2LMHeadModel
    else:
        raise ValueError(arch)
    config._attn_implementation = "eager"
    hf = hf_cls(config).eval()
    _randomise_norms(hf, seed=1)
    native = native_cls(config).eval()
    native.load_hf_state_dict(hf.state_dict())
    return hf, native


@pytest.fixture(
    scope="module",
    params=[
        "gpt_neo",
        "llama",
        "gemma3",
        "gemma3_softcap",
        "gptj",
        "gpt_neox",
        "gpt_neox_sequential",
        "gpt2",
    ],
)
def pair(request) -> tuple[torch.nn.Module, CausalLM]:
    return make_pair(request.param)


@pytest.fixture(scope="module")
def dpair(pair, device, to_device) -> tuple[torch.nn.Module, CausalLM]:
    """`pair` on each device (`device`): the CPU, and CUDA where there is one."""
    hf, native = pair
    return to_device(hf), to_device(native)


@pytest.fixture(scope="session")
def model_pair_factory():
    """make_pair, for tests that build their own pairs (e.g. to quantize one side)."""
    return make_pair


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir) -> Path:
    """A tiny random GPT-2 (2 layers, hidden 32, real vocab) saved with save_pretrained, plus the
    real GPT-2 tokenizer files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, vocab_size=50257)
    target = tmp_path_factory.mktemp("tiny_gpt2")
    return save_with_tokenizer(GPT2LMHeadModel(cfg), target, gpt2_tokenizer_dir)
