"""GPT-NeoX (Pythia, GPT-NeoX-20B), natively: fused QKV, partial rotary, parallel residual.

Matches transformers' `GPTNeoXForCausalLM` (module names equal its state-dict keys; older
checkpoints' `embed_out.weight` is read as `lm_head.weight`, as transformers 5 does):
- token embeddings only, final LayerNorm, an LM head without bias (untied unless configured);
- attention: one fused `query_key_value` projection whose output is laid out per head as
  [q, k, v] (view [N, H, 3 * D], then split), optional biases (`attention_bias`), scaled by
  1/sqrt(head_dim); rotary positions in the rotate_half convention on the first
  `partial_rotary_factor * head_dim` dims of each head (`rotary_pct` in older configs);
- `use_parallel_residual`: x + attn(ln1(x)) + mlp(ln2(x)); otherwise the sequential
  h = x + attn(ln1(x)); h + mlp(ln2(h));
- MLP: dense_h_to_4h -> activation (gelu) -> dense_4h_to_h, both with bias.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fewshot.models import attention
from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM, ModelSpec
from fewshot.models.layers import (
    RotaryEmbedding,
    activation,
    apply_partial_rotary,
    as_id_list,
    rope_inv_freq,
)

Rope = tuple[torch.Tensor, torch.Tensor]


def _rope_params(config) -> dict:
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:  # older transformers: rotary_pct / rotary_emb_base on the config
        params = {
            "rope_type": "default",
            "rope_theta": getattr(config, "rotary_emb_base", 10000.0),
            "partial_rotary_factor": getattr(config, "rotary_pct", 1.0),
        }
    params.setdefault("rope_type", "default")
    return params


def rotary_dims(config) -> int:
    """How many dims of each head get rotary positions."""
    head_dim = config.hidden_size // config.num_attention_heads
    return int(head_dim * float(_rope_params(config).get("partial_rotary_factor", 1.0)))


class GPTNeoXAttention(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        hidden, bias = config.hidden_size, bool(getattr(config, "attention_bias", True))
        self.n_heads = config.num_attention_heads
        self.head_dim = hidden // self.n_heads
        if self.head_dim * self.n_heads != hidden:
            raise ValueError(f"hidden_size {hidden} is not divisible by {self.n_heads} heads")
        self.query_key_value = nn.Linear(hidden, 3 * hidden, bias=bias)
        self.dense = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, x: torch.Tensor, rope: Rope, attn: AttentionMetadata, layer: int):
        """x [N, C], rope = (cos, sin) [N, R] -> [N, C]."""
        qkv = self.query_key_value(x).view(x.shape[0], self.n_heads, 3 * self.head_dim)
        q, k, v = qkv.chunk(3, dim=-1)  # each [N, H, D]
        cos, sin = rope
        q, k = apply_partial_rotary(q, cos, sin), apply_partial_rotary(k, cos, sin)
        out = attention.paged_attention(q, k, v, attn, layer, scale=self.head_dim**-0.5)
        return self.dense(out)  # [N, C]


class GPTNeoXMLP(nn.Module):
    activated = "dense_h_to_4h"  # the Linear that `act` follows (fused in packed.py)

    def __init__(self, config) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.parallel = bool(config.use_parallel_residual)
        self.input_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.attention = GPTNeoXAttention(config)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, x: torch.Tensor, rope: Rope, attn: AttentionMetadata, layer: int):
        """x [N, C] -> [N, C]."""
        a = self.attention(self.input_layernorm(x), rope, attn, layer)
        if self.parallel:
            return self.mlp(self.post_attention_layernorm(x)) + a + x
        h = a + x
        return self.mlp(self.post_attention_layernorm(h)) + h


class GPTNeoXModel(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([GPTNeoXLayer(config) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        params = {k: v for k, v in _rope_params(config).items() if k != "partial_rotary_factor"}
        self.rotary_emb = RotaryEmbedding(rope_inv_freq(params, rotary_dims(config)))


class GPTNeoXForCausalLM(CausalLM):
    """Native GPT-NeoX over the paged-KV model contract of base.py."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        head_dim = config.hidden_size // config.num_attention_heads
        rot = rotary_dims(config)
        if rot % 2 or not 0 < rot <= head_dim:
            raise ValueError(f"{rot} rotary dims: must be even and in (0, {head_dim}]")
        self.gpt_neox = GPTNeoXModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_head(
            self.gpt_neox.embed_in,
            "gpt_neox.embed_in.weight",
            getattr(config, "tie_word_embeddings", False),
        )
        self.spec = ModelSpec(
            arch="gpt_neox",
            vocab_size=config.vocab_size,
            n_layers=config.num_hidden_layers,
            n_kv_heads=config.num_attention_heads,
            head_dim=head_dim,
            max_positions=config.max_position_embeddings,
            hidden_size=config.hidden_size,
            windows=[None] * config.num_hidden_layers,
            eos_token_ids=as_id_list(config.eos_token_id),
            bos_token_id=config.bos_token_id,
        )

    def checkpoint_key(self, name: str, has: Callable[[str], bool]) -> str:
        """Checkpoints from before transformers 5 call the head `embed_out`."""
        if name == "lm_head.weight" and not has(name) and has("embed_out.weight"):
            return "embed_out.weight"
        return name

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        m = self.gpt_neox
        x = m.embed_in(input_ids)  # [N, C]
        rope = m.rotary_emb(positions, x.dtype)  # 2 x [N, R]
        for layer, block in enumerate(m.layers):
            x = block(x, rope, attn, layer)
        x = x[logits_indices]  # [M, C]
        return self.lm_head(m.final_layer_norm(x)).float()  # [M, vocab]
