"""GGUF facts of the GPT families llama.cpp defines: `gpt2` and `gptneox`.

`gguf_loader` converts a GGUF file into a Hugging Face directory; this module gives it, for these
two architectures, the transformers config (`build_config`), the HF key of each tensor (`hf_name`)
and the undoing of what llama.cpp's converter changed (`restore_tensor`):
- gpt2: HF's Conv1D weights ([in, out]) were transposed to [out, in]; they are transposed back,
  so the directory is an ordinary GPT-2 checkpoint. The converter stores the tied LM head as its
  own `output` tensor; an `output` equal to the embeddings is dropped and the head tied again.
- gptneox: the fused QKV rows, per head [q, k, v] in HF, were regrouped as [all q, all k, all v];
  they are interleaved per head again. Older files have no `rope.freq_base` (10,000 then).
"""

from __future__ import annotations

from typing import Any

import torch

ARCHS = ("gpt2", "gptneox")

_TOP = {
    "gpt2": {
        "token_embd": "transformer.wte",
        "position_embd": "transformer.wpe",
        "output_norm": "transformer.ln_f",
        "output": "lm_head",
    },
    "gptneox": {
        "token_embd": "gpt_neox.embed_in",
        "output_norm": "gpt_neox.final_layer_norm",
        "output": "lm_head",
    },
}
_BLOCK = {
    "gpt2": (
        "transformer.h",
        {
            "attn_norm": "ln_1",
            "attn_qkv": "attn.c_attn",
            "attn_output": "attn.c_proj",
            "ffn_norm": "ln_2",
            "ffn_up": "mlp.c_fc",
            "ffn_down": "mlp.c_proj",
        },
    ),
    "gptneox": (
        "gpt_neox.layers",
        {
            "attn_norm": "input_layernorm",
            "attn_qkv": "attention.query_key_value",
            "attn_output": "attention.dense",
            "ffn_norm": "post_attention_layernorm",
            "ffn_up": "mlp.dense_h_to_4h",
            "ffn_down": "mlp.dense_4h_to_h",
        },
    ),
}


def hf_name(arch: str, layer: str | None, part: str, kind: str) -> str | None:
    """HF key of tensor `blk.{layer}.{part}.{kind}`, or of `{part}.{kind}` when `layer` is None;
    None when the tensor has no HF counterpart."""
    if layer is None:
        target = _TOP[arch].get(part)
        return f"{target}.{kind}" if target else None
    prefix, block = _BLOCK[arch]
    target = block.get(part)
    return f"{prefix}.{layer}.{target}.{kind}" if target else None


def build_config(g: Any) -> Any:
    """The transformers config (GPT2Config / GPTNeoXConfig) of GGUFFile `g`."""
    md = g.metadata
    hidden = int(g.arch_value("embedding_length"))
    n_heads = int(g.arch_value("attention.head_count"))
    common: dict[str, Any] = {
        "vocab_size": g.tensors["token_embd.weight"].shape[0],
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
    }
    if g.arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            **common,
            n_embd=hidden,
            n_layer=int(g.arch_value("block_count")),
            n_head=n_heads,
            n_inner=int(g.arch_value("feed_forward_length", 4 * hidden)),
            n_positions=int(g.arch_value("context_length")),
            layer_norm_epsilon=float(g.arch_value("attention.layer_norm_epsilon", 1e-5)),
            activation_function="gelu_new",
            tie_word_embeddings=_head_is_embedding(g),
        )
    from transformers import GPTNeoXConfig

    head_dim = hidden // n_heads
    rot = int(g.arch_value("rope.dimension_count", head_dim))
    return GPTNeoXConfig(
        **common,
        hidden_size=hidden,
        num_hidden_layers=int(g.arch_value("block_count")),
        num_attention_heads=n_heads,
        intermediate_size=int(g.arch_value("feed_forward_length", 4 * hidden)),
        max_position_embeddings=int(g.arch_value("context_length")),
        layer_norm_eps=float(g.arch_value("attention.layer_norm_epsilon", 1e-5)),
        use_parallel_residual=bool(g.arch_value("use_parallel_residual", True)),
        attention_bias="blk.0.attn_qkv.bias" in g.tensors,
        hidden_act="gelu",
        tie_word_embeddings="output.weight" not in g.tensors,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(g.arch_value("rope.freq_base", 10_000.0)),
            "partial_rotary_factor": rot / head_dim,
        },
    )


def _head_is_embedding(g: Any) -> bool:
    if "output.weight" not in g.tensors:
        return True
    return torch.equal(g.tensor("output.weight"), g.tensor("token_embd.weight"))


def restore_tensor(arch: str, gguf_name: str, t: torch.Tensor, config: Any) -> torch.Tensor:
    """Undo llama.cpp's converter for one tensor (see the module docstring)."""
    part = gguf_name.split(".")[-2]
    if arch == "gpt2" and part in ("attn_qkv", "attn_output", "ffn_up", "ffn_down"):
        return t.t() if t.dim() == 2 else t
    if arch == "gptneox" and part == "attn_qkv":
        heads = config.num_attention_heads
        # [3, H, D, ...] (all q, all k, all v) -> [H, 3, D, ...] (per head q, k, v)
        return t.reshape(3, heads, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    return t


def dropped(key: str, config: Any) -> bool:
    """Whether the converted checkpoint leaves `key` out: a tied head is not stored twice."""
    return key == "lm_head.weight" and bool(getattr(config, "tie_word_embeddings", False))
