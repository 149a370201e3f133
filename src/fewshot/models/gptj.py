"""GPT-J, natively: partial interleaved rotary positions, parallel attention and MLP.

Matches transformers' `GPTJForCausalLM` (module names equal its state-dict keys):
- token embeddings only (no learned positions), final LayerNorm, an untied LM head *with* bias;
- one LayerNorm per block feeding both attention and MLP: x + attn(ln_1(x)) + mlp(ln_1(x));
- attention: q/k/v/out without bias, scaled by 1/sqrt(head_dim), computed in float32; rotary
  positions (base 10000) on the first `rotary_dim` dims of each head (all of them when None) in
  GPT-J's interleaved "rotate every two" convention;
- MLP: fc_in -> activation (gelu_new) -> fc_out, both with bias.
"""

from __future__ import annotations

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
    interleaved_rope,
    rope_inv_freq,
)

ROPE_BASE = 10000.0  # GPT-J's sinusoids use a fixed base

Rope = tuple[torch.Tensor, torch.Tensor]


class GPTJAttention(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        hidden = config.n_embd
        self.n_heads = config.n_head
        self.head_dim = hidden // self.n_heads
        if self.head_dim * self.n_heads != hidden:
            raise ValueError(f"n_embd {hidden} is not divisible by n_head {self.n_heads}")
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.out_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, rope: Rope, attn: AttentionMetadata, layer: int):
        """x [N, C], rope = interleaved (cos, sin) [N, R] -> [N, C]."""
        shape = (x.shape[0], self.n_heads, self.head_dim)
        q = self.q_proj(x).view(shape)  # [N, H, D]
        k = self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape)
        cos, sin = rope
        q = apply_partial_rotary(q, cos, sin, interleaved=True)
        k = apply_partial_rotary(k, cos, sin, interleaved=True)
        out = attention.paged_attention(q, k, v, attn, layer, scale=self.head_dim**-0.5, fp32=True)
        return self.out_proj(out)  # [N, C]


class GPTJMLP(nn.Module):
    activated = "fc_in"  # the Linear that `act` follows (fused in packed.py)

    def __init__(self, config) -> None:
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.fc_in = nn.Linear(config.n_embd, inner)
        self.fc_out = nn.Linear(inner, config.n_embd)
        self.act = activation(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        return self.fc_out(self.act(self.fc_in(x)))


class GPTJBlock(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPTJAttention(config)
        self.mlp = GPTJMLP(config)

    def forward(self, x: torch.Tensor, rope: Rope, attn: AttentionMetadata, layer: int):
        """x [N, C] -> [N, C]: attention and MLP read the same normalised input."""
        h = self.ln_1(x)
        return self.attn(h, rope, attn, layer) + self.mlp(h) + x


class GPTJModel(nn.Module):
    def __init__(self, config, rotary_dim: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList([GPTJBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        params = {"rope_type": "default", "rope_theta": ROPE_BASE}
        self.rotary_emb = RotaryEmbedding(rope_inv_freq(params, rotary_dim))


class GPTJForCausalLM(CausalLM):
    """Native GPT-J over the paged-KV model contract of base.py."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        head_dim = config.n_embd // config.n_head
        rotary_dim = config.rotary_dim or head_dim
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head dim {head_dim}")
        self.transformer = GPTJModel(config, rotary_dim)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)
        self.tie_head(
            self.transformer.wte,
            "transformer.wte.weight",
            getattr(config, "tie_word_embeddings", False),
        )
        self.spec = ModelSpec(
            arch="gptj",
            vocab_size=config.vocab_size,
            n_layers=config.n_layer,
            n_kv_heads=config.n_head,
            head_dim=head_dim,
            max_positions=config.n_positions,
            hidden_size=config.n_embd,
            windows=[None] * config.n_layer,
            eos_token_ids=as_id_list(config.eos_token_id),
            bos_token_id=config.bos_token_id,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        t = self.transformer
        x = t.wte(input_ids)  # [N, C]
        rope = interleaved_rope(*t.rotary_emb(positions, x.dtype))  # 2 x [N, R]
        for layer, block in enumerate(t.h):
            x = block(x, rope, attn, layer)
        x = x[logits_indices]  # [M, C]
        return self.lm_head(t.ln_f(x)).float()  # [M, vocab]
