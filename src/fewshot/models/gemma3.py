"""Gemma 3 (text only, e.g. gemma-3-270m), natively.

Matches transformers' `Gemma3ForCausalLM` (module names equal its state-dict keys):
- embeddings multiplied by sqrt(hidden_size) (the factor cast to the weights' dtype first);
- every norm is Gemma's RMSNorm (weight applied as 1 + w, in float32); four per layer: input,
  post-attention, pre-feedforward, post-feedforward ("sandwich" norms around both sublayers);
- attention: GQA with RMS-normalised queries and keys (q_norm / k_norm over head_dim), rotary
  positions with a per-layer-type base ("sliding_attention": rope_local_base_freq, typically
  10k; "full_attention": rope_theta, optionally linearly scaled), scale query_pre_attn_scalar**-0.5;
  sliding layers see the last `sliding_window` positions. `attn_logit_softcapping` is ignored,
  as transformers' Gemma 3 ignores it (Gemma 3 checkpoints leave it unset);
- MLP: gelu_pytorch_tanh(gate) * up -> down; optional final-logit softcapping; tied LM head.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from fewshot.models import attention
from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM, ModelSpec
from fewshot.models.layers import (
    GemmaRMSNorm,
    RotaryEmbedding,
    activation,
    apply_rotary,
    as_id_list,
    rope_inv_freq,
)
from fewshot.models.native_step import DecodeLayers, describe, gated_layer

SLIDING, FULL = "sliding_attention", "full_attention"


def _layer_types(config) -> list[str]:
    types = list(getattr(config, "layer_types", None) or [])
    if not types:  # older configs: every `sliding_window_pattern`-th layer is global
        pattern = getattr(config, "sliding_window_pattern", 6)
        types = [
            FULL if (i + 1) % pattern == 0 else SLIDING for i in range(config.num_hidden_layers)
        ]
    if len(types) != config.num_hidden_layers or set(types) - {SLIDING, FULL}:
        raise ValueError(f"bad Gemma 3 layer_types {types}")
    return types


def _rope_params(config, layer_type: str) -> dict:
    """rope_parameters of one layer type (transformers >= 5) or the older flat fields."""
    params = getattr(config, "rope_parameters", None)
    if params and layer_type in params and params[layer_type]:
        return dict(params[layer_type])
    if layer_type == SLIDING:
        return {"rope_type": "default", "rope_theta": getattr(config, "rope_local_base_freq", 1e4)}
    out = dict(getattr(config, "rope_scaling", None) or {})
    out.setdefault("rope_type", out.pop("type", "default"))
    out["rope_theta"] = getattr(config, "rope_theta", 1e6)
    return out


class Gemma3Attention(nn.Module):
    def __init__(self, config, window: int | None) -> None:
        super().__init__()
        hidden, bias = config.hidden_size, bool(getattr(config, "attention_bias", False))
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = window
        self.scale = float(config.query_pre_attn_scalar) ** -0.5
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=bias)
        self.q_norm = GemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn: AttentionMetadata,
        layer: int,
    ) -> torch.Tensor:
        """x [N, C], rope = (cos, sin) [N, D] for this layer's type -> [N, C]."""
        n = x.shape[0]
        q = self.q_norm(self.q_proj(x).view(n, self.n_heads, self.head_dim))  # [N, Hq, D]
        k = self.k_norm(self.k_proj(x).view(n, self.n_kv, self.head_dim))  # [N, Hkv, D]
        v = self.v_proj(x).view(n, self.n_kv, self.head_dim)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention.paged_attention(
            q, k, v, attn, layer, scale=self.scale, window=self.window
        )  # [N, Hq * D]
        return self.o_proj(out)


class Gemma3MLP(nn.Module):
    activated = "gate_proj"  # the Linear that `act` follows (fused in packed.py)

    def __init__(self, config) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)
        self.act = activation(config.hidden_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config, layer_type: str) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.layer_type = layer_type
        window = int(config.sliding_window) if layer_type == SLIDING else None
        self.self_attn = Gemma3Attention(config, window)
        self.mlp = Gemma3MLP(config)
        self.input_layernorm = GemmaRMSNorm(hidden, eps=eps)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps=eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps=eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn: AttentionMetadata,
        layer: int,
    ) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        h = self.self_attn(self.input_layernorm(x), rope, attn, layer)
        x = x + self.post_attention_layernorm(h)
        h = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(h)


class Gemma3RotaryEmbedding(nn.Module):
    """One rotary table per layer type (different bases / scaling)."""

    def __init__(self, config, layer_types: list[str]) -> None:
        super().__init__()
        self.tables = nn.ModuleDict(
            {
                t: RotaryEmbedding(rope_inv_freq(_rope_params(config, t), config.head_dim))
                for t in sorted(set(layer_types))
            }
        )

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """positions [N] -> {layer type: (cos, sin) [N, D]}."""
        return {t: table(positions, dtype) for t, table in self.tables.items()}


class Gemma3TextModel(nn.Module):
    def __init__(self, config, layer_types: list[str]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_scale = float(config.hidden_size) ** 0.5
        self.layers = nn.ModuleList([Gemma3DecoderLayer(config, t) for t in layer_types])
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Gemma3RotaryEmbedding(config, layer_types)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [N] -> [N, C], scaled by sqrt(C) rounded to the rows' dtype (as HF; an
        int8 model's bf16 embedding hands over float32 rows, scaled in float32)."""
        rows = self.embed_tokens(input_ids)
        return rows * torch.tensor(self.embed_scale, dtype=torch.float32).to(rows.dtype)


class Gemma3ForCausalLM(CausalLM):
    """Native Gemma 3 text model over the paged-KV model contract of base.py."""

    def __init__(self, config) -> None:
        super().__init__()
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("bidirectional Gemma 3 variants are not supported")
        self.config = config
        layer_types = _layer_types(config)
        self.model = Gemma3TextModel(config, layer_types)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_head(
            self.model.embed_tokens,
            "model.embed_tokens.weight",
            getattr(config, "tie_word_embeddings", True),
        )
        self.final_softcap = getattr(config, "final_logit_softcapping", None)
        self.spec = ModelSpec(
            arch="gemma3",
            vocab_size=config.vocab_size,
            n_layers=config.num_hidden_layers,
            n_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            max_positions=config.max_position_embeddings,
            hidden_size=config.hidden_size,
            windows=[int(config.sliding_window) if t == SLIDING else None for t in layer_types],
            eos_token_ids=as_id_list(config.eos_token_id),
            bos_token_id=config.bos_token_id,
        )

    def decode_layers(self) -> DecodeLayers:
        layers = cast(list[Gemma3DecoderLayer], list(self.model.layers))
        tables = list(self.model.rotary_emb.tables)  # the order `forward` passes them in
        described = [
            gated_layer(
                b.self_attn,
                b.mlp,
                in_norm=b.input_layernorm,
                post_attn=b.post_attention_layernorm,
                pre_ff=b.pre_feedforward_layernorm,
                post_ff=b.post_feedforward_layernorm,
                q_norm=b.self_attn.q_norm,
                k_norm=b.self_attn.k_norm,
                rope=tables.index(b.layer_type),
                window=b.self_attn.window,
                scale=b.self_attn.scale,
            )  # fmt: skip
            for b in layers
        ]
        return describe(described, layers[0].self_attn, layers[0].mlp.act, self.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        m = self.model
        x = m.embed(input_ids)  # [N, C]
        ropes = m.rotary_emb(positions, x.dtype)  # type -> 2 x [N, D]
        if (step := self.fused_layers(x, attn)) is not None:
            x = step.run(x, attn, list(ropes.values()))
        else:
            for layer, block in enumerate(m.layers):
                x = block(x, ropes[block.layer_type], attn, layer)
        x = x[logits_indices]  # [M, C]
        out = self.lm_head(m.norm(x)).float()  # [M, vocab]
        if self.final_softcap is not None:
            out = torch.tanh(out / self.final_softcap) * self.final_softcap
        return out
