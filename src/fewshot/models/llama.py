"""Llama (SmolLM2-style), natively: RMSNorm, rotary positions, grouped-query attention, SiLU-gated MLP.

Matches transformers' `LlamaForCausalLM` (module names equal its state-dict keys). The LM head is
tied to the embeddings when `config.tie_word_embeddings` is set.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from fewshot.models import attention
from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM, ModelSpec
from fewshot.models.layers import (
    RMSNorm,
    RotaryEmbedding,
    activation,
    apply_rotary,
    as_id_list,
    rope_inv_freq,
)
from fewshot.models.native_step import DecodeLayers, describe, gated_layer


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope_params(config) -> dict:
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    # older transformers: rope_theta + rope_scaling on the config
    params = dict(getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return params


class LlamaAttention(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        hidden, bias = config.hidden_size, bool(getattr(config, "attention_bias", False))
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = _head_dim(config)
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn: AttentionMetadata,
        layer: int,
    ) -> torch.Tensor:
        """x [N, C], rope = (cos, sin) [N, D] -> [N, C]."""
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.n_heads, self.head_dim)  # [N, Hq, D]
        k = self.k_proj(x).view(n, self.n_kv, self.head_dim)  # [N, Hkv, D]
        v = self.v_proj(x).view(n, self.n_kv, self.head_dim)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention.paged_attention(q, k, v, attn, layer, scale=self.head_dim**-0.5)
        return self.o_proj(out)  # [N, C]


class LlamaMLP(nn.Module):
    activated = "gate_proj"  # the Linear that `act` follows (fused in packed.py)

    def __init__(self, config) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn: AttentionMetadata,
        layer: int,
    ) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        x = x + self.self_attn(self.input_layernorm(x), rope, attn, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(rope_inv_freq(_rope_params(config), _head_dim(config)))


class LlamaForCausalLM(CausalLM):
    """Native Llama over the paged-KV model contract of base.py."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_head(
            self.model.embed_tokens,
            "model.embed_tokens.weight",
            getattr(config, "tie_word_embeddings", False),
        )
        window = getattr(config, "sliding_window", None)
        if window is not None and getattr(config, "use_sliding_window", True):
            raise ValueError("sliding-window Llama variants are not supported")
        self.spec = ModelSpec(
            arch="llama",
            vocab_size=config.vocab_size,
            n_layers=config.num_hidden_layers,
            n_kv_heads=config.num_key_value_heads,
            head_dim=_head_dim(config),
            max_positions=config.max_position_embeddings,
            hidden_size=config.hidden_size,
            windows=[None] * config.num_hidden_layers,
            eos_token_ids=as_id_list(config.eos_token_id),
            bos_token_id=config.bos_token_id,
        )

    def decode_layers(self) -> DecodeLayers:
        layers = cast(list[LlamaDecoderLayer], list(self.model.layers))
        first = layers[0].self_attn
        scale = first.head_dim**-0.5
        described = [
            gated_layer(
                b.self_attn,
                b.mlp,
                in_norm=b.input_layernorm,
                pre_ff=b.post_attention_layernorm,
                rope=0,
                scale=scale,
            )  # fmt: skip
            for b in layers
        ]
        return describe(described, first, layers[0].mlp.act, self.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        m = self.model
        x = m.embed_tokens(input_ids)  # [N, C]
        rope = m.rotary_emb(positions, x.dtype)  # 2 x [N, D]
        if (step := self.fused_layers(x, attn)) is not None:
            x = step.run(x, attn, [rope])
        else:
            for layer, block in enumerate(m.layers):
                x = block(x, rope, attn, layer)
        x = x[logits_indices]  # [M, C]
        out = self.lm_head(m.norm(x)).float()  # [M, vocab]
        return out
