"""GPT-Neo, natively: learned absolute positions, alternating global/local attention.

Matches transformers' `GPTNeoForCausalLM` (module names equal its state-dict keys):
- token + learned position embeddings, pre-LayerNorm blocks, final LayerNorm, tied LM head;
- attention: q/k/v without bias, out_proj with bias, *no* 1/sqrt(d) scaling, computed in float32;
  "local" layers see the last `window_size` positions (the query's own included);
- MLP: c_fc -> activation (gelu_new) -> c_proj, both with bias.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from fewshot.models import attention
from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM, ModelSpec
from fewshot.models.layers import LayerNorm, activation, as_id_list
from fewshot.models.native_step import DecodeLayer, DecodeLayers, describe


class GPTNeoSelfAttention(nn.Module):
    def __init__(self, config, window: int | None) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.n_heads = config.num_heads
        self.head_dim = hidden // self.n_heads
        if self.head_dim * self.n_heads != hidden:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_heads {self.n_heads}")
        self.window = window
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.out_proj = nn.Linear(hidden, hidden, bias=True)

    def forward(self, x: torch.Tensor, attn: AttentionMetadata, layer: int) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        n = x.shape[0]
        shape = (n, self.n_heads, self.head_dim)
        q = self.q_proj(x).view(shape)  # [N, H, D]
        k = self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape)
        out = attention.paged_attention(
            q, k, v, attn, layer, scale=1.0, window=self.window, fp32=True
        )  # [N, C]
        return self.out_proj(out)


class GPTNeoAttention(nn.Module):
    """Wrapper that exists only so the parameter names match HF (`attn.attention.q_proj`)."""

    def __init__(self, config, window: int | None) -> None:
        super().__init__()
        self.attention = GPTNeoSelfAttention(config, window)


class GPTNeoMLP(nn.Module):
    activated = "c_fc"  # the Linear that `act` follows (fused in packed.py)

    def __init__(self, config) -> None:
        super().__init__()
        hidden = config.hidden_size
        inner = config.intermediate_size or 4 * hidden
        self.c_fc = nn.Linear(hidden, inner)
        self.c_proj = nn.Linear(inner, hidden)
        self.act = activation(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        return self.c_proj(self.act(self.c_fc(x)))


class GPTNeoBlock(nn.Module):
    def __init__(self, config, window: int | None) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        self.ln_1 = LayerNorm(hidden, eps=eps)
        self.attn = GPTNeoAttention(config, window)
        self.ln_2 = LayerNorm(hidden, eps=eps)
        self.mlp = GPTNeoMLP(config)

    def forward(self, x: torch.Tensor, attn: AttentionMetadata, layer: int) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        x = x + self.attn.attention(self.ln_1(x), attn, layer)
        return x + self.mlp(self.ln_2(x))


class GPTNeoModel(nn.Module):
    def __init__(self, config, windows: list[int | None]) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList([GPTNeoBlock(config, w) for w in windows])
        self.ln_f = LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


def _layer_windows(config) -> list[int | None]:
    windows: list[int | None] = []
    for kind in config.attention_layers:
        if kind == "global":
            windows.append(None)
        elif kind == "local":
            windows.append(int(config.window_size))
        else:
            raise ValueError(f"unknown GPT-Neo attention type {kind!r}")
    if len(windows) != config.num_layers:
        raise ValueError(f"{len(windows)} attention types for {config.num_layers} layers")
    return windows


class GPTNeoForCausalLM(CausalLM):
    """Native GPT-Neo over the paged-KV model contract of base.py."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        windows = _layer_windows(config)
        self.transformer = GPTNeoModel(config, windows)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_head(
            self.transformer.wte,
            "transformer.wte.weight",
            getattr(config, "tie_word_embeddings", True),
        )
        self.spec = ModelSpec(
            arch="gpt_neo",
            vocab_size=config.vocab_size,
            n_layers=config.num_layers,
            n_kv_heads=config.num_heads,
            head_dim=config.hidden_size // config.num_heads,
            max_positions=config.max_position_embeddings,
            hidden_size=config.hidden_size,
            windows=windows,
            eos_token_ids=as_id_list(config.eos_token_id),
            bos_token_id=config.bos_token_id,
        )

    def decode_layers(self) -> DecodeLayers:
        blocks = cast(list[GPTNeoBlock], list(self.transformer.h))
        described = [
            DecodeLayer(
                q=b.attn.attention.q_proj,
                k=b.attn.attention.k_proj,
                v=b.attn.attention.v_proj,
                o=b.attn.attention.out_proj,
                w1=b.mlp.c_fc,
                w2=b.mlp.c_proj,
                in_norm=b.ln_1,
                pre_ff=b.ln_2,
                window=b.attn.attention.window,
                scale=1.0,
            )  # fmt: skip
            for b in blocks
        ]
        attention = blocks[0].attn.attention
        return describe(described, attention, blocks[0].mlp.act, self.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        t = self.transformer
        x = t.wte(input_ids) + t.wpe(positions)  # [N, C]
        if (step := self.fused_layers(x, attn)) is not None:
            x = step.run(x, attn)
        else:
            for layer, block in enumerate(t.h):
                x = block(x, attn, layer)
        x = x[logits_indices]  # [M, C]
        out = self.lm_head(t.ln_f(x)).float()  # [M, vocab]
        return out
