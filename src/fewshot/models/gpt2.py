"""GPT-2, natively: learned absolute positions, fused QKV, pre-LayerNorm blocks, tied head.

Matches transformers' `GPT2LMHeadModel`. Parameter names equal its state-dict keys; the key
mapping at load (`load_hf_state_dict`):
- HF's `Conv1D` stores weights as [in, out]; here every projection is an `nn.Linear` ([out, in],
  so int8 quantization and any other Linear-level feature apply), and the 2-D `c_attn`,
  `c_proj` and `c_fc` weights are transposed when loaded;
- checkpoints saved from the bare `GPT2Model` (the original OpenAI conversions: `h.0...`,
  `wte.weight`) get the `transformer.` prefix.
Attention: `c_attn` yields [q | k | v] (each [N, C]), scaled by 1/sqrt(head_dim) when
`scale_attn_weights`, further by 1/(layer + 1) when `scale_attn_by_inverse_layer_idx`, and
computed in float32 when `reorder_and_upcast_attn`. MLP: c_fc -> activation -> c_proj.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fewshot.models import attention
from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM, ModelSpec
from fewshot.models.layers import activation, as_id_list

CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


class GPT2Attention(nn.Module):
    def __init__(self, config, layer: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.head_dim = hidden // self.n_heads
        if self.head_dim * self.n_heads != hidden:
            raise ValueError(f"hidden_size {hidden} is not divisible by {self.n_heads} heads")
        self.scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer + 1)
        self.fp32 = bool(config.reorder_and_upcast_attn)
        self.c_attn = nn.Linear(hidden, 3 * hidden)
        self.c_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, attn: AttentionMetadata, layer: int) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        shape = (x.shape[0], self.n_heads, self.head_dim)
        q, k, v = (t.reshape(shape) for t in self.c_attn(x).chunk(3, dim=-1))  # [N, H, D]
        out = attention.paged_attention(q, k, v, attn, layer, scale=self.scale, fp32=self.fp32)
        return self.c_proj(out)


class GPT2MLP(nn.Module):
    activated = "c_fc"  # the Linear that `act` follows (fused in packed.py)

    def __init__(self, config) -> None:
        super().__init__()
        hidden = config.hidden_size
        inner = config.n_inner if config.n_inner is not None else 4 * hidden
        self.c_fc = nn.Linear(hidden, inner)
        self.c_proj = nn.Linear(inner, hidden)
        self.act = activation(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, config, layer: int) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(hidden, eps=eps)
        self.attn = GPT2Attention(config, layer)
        self.ln_2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, attn: AttentionMetadata, layer: int) -> torch.Tensor:
        """x [N, C] -> [N, C]."""
        x = x + self.attn(self.ln_1(x), attn, layer)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList([GPT2Block(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


class GPT2LMHeadModel(CausalLM):
    """Native GPT-2 over the paged-KV model contract of base.py."""

    def __init__(self, config) -> None:
        super().__init__()
        if getattr(config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention is not supported")
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_head(
            self.transformer.wte,
            "transformer.wte.weight",
            getattr(config, "tie_word_embeddings", True),
        )
        n_layers = config.num_hidden_layers
        self.spec = ModelSpec(
            arch="gpt2",
            vocab_size=config.vocab_size,
            n_layers=n_layers,
            n_kv_heads=config.num_attention_heads,
            head_dim=config.hidden_size // config.num_attention_heads,
            max_positions=config.max_position_embeddings,
            hidden_size=config.hidden_size,
            windows=[None] * n_layers,
            eos_token_ids=as_id_list(config.eos_token_id),
            bos_token_id=config.bos_token_id,
        )

    def checkpoint_key(self, name: str, has: Callable[[str], bool]) -> str:
        """Checkpoints saved from the bare GPT2Model lack the `transformer.` prefix."""
        if not has(name) and name.startswith("transformer."):
            return name[len("transformer.") :]
        return name

    def checkpoint_transposed(self, name: str) -> bool:
        return name.endswith(CONV1D_WEIGHTS)  # Conv1D stores [in, out]

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        t = self.transformer
        x = t.wte(input_ids) + t.wpe(positions)  # [N, C]
        for layer, block in enumerate(t.h):
            x = block(x, attn, layer)
        x = x[logits_indices]  # [M, C]
        return self.lm_head(t.ln_f(x)).float()  # [M, vocab]
