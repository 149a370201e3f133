"""The interface every native model implements, and the per-sequence KV cache they write into.

A forward pass takes a *flattened* batch: the new tokens of several sequences concatenated into
one 1-D tensor, with how many tokens belong to each sequence. Linear layers run on all tokens at
once (so a batch of decodes shares one read of the weights); attention runs per sequence against
that sequence's own cache, so prefills and decodes can be mixed and no padding is ever needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn


@dataclass
class ModelSpec:
    """Architecture facts the engine needs, independent of the family."""

    arch: str  # "gpt_neo" | "llama" | "gemma3" | "hf_fallback"
    vocab_size: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    max_positions: int
    hidden_size: int = 0
    # per layer: None for global attention, else the sliding window in tokens
    windows: list[int | None] = field(default_factory=list)
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None


class KVCache:
    """Keys and values of one sequence, for every layer: buffers [n_kv_heads, capacity, head_dim].

    `length` counts the positions already written. A forward pass writes its new tokens at
    `length` in every layer (via `write`) and the model calls `advance` once at the end.
    """

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        capacity: int = 64,
    ) -> None:
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.length = 0
        self.k = [torch.empty(n_kv_heads, capacity, head_dim, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.empty(n_kv_heads, capacity, head_dim, dtype=dtype) for _ in range(n_layers)]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    def reserve(self, total: int) -> None:
        """Grow every buffer (doubling) so that `total` positions fit."""
        if total <= self.capacity:
            return
        new_cap = max(total, 2 * self.capacity)
        for i in range(self.n_layers):
            for buf in (self.k, self.v):
                grown = torch.empty(self.n_kv_heads, new_cap, self.head_dim, dtype=self.dtype)
                grown[:, : self.length] = buf[i][:, : self.length]
                buf[i] = grown

    def write(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v of the new tokens [n_kv_heads, t, head_dim] at `length`; return views of
        all keys and values so far [n_kv_heads, length + t, head_dim]."""
        t = k_new.shape[1]
        end = self.length + t
        self.reserve(end)
        self.k[layer][:, self.length : end] = k_new
        self.v[layer][:, self.length : end] = v_new
        return self.k[layer][:, :end], self.v[layer][:, :end]

    def advance(self, t: int) -> None:
        self.length += t

    def truncate(self, length: int) -> None:
        """Forget everything from position `length` on."""
        self.length = min(self.length, length)

    def load_prefix(self, ks: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
        """Fill an empty cache with a stored prefix (per layer [n_kv_heads, t, head_dim])."""
        t = ks[0].shape[1]
        self.length = 0
        self.reserve(t)
        for i in range(self.n_layers):
            self.k[i][:, :t] = ks[i]
            self.v[i][:, :t] = vs[i]
        self.length = t

    def slice(self, start: int, end: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of positions [start, end) for every layer (for the prefix cache)."""
        return (
            [k[:, start:end].clone() for k in self.k],
            [v[:, start:end].clone() for v in self.v],
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class CausalLM(nn.Module):
    """Base class of the native model families.

    Subclasses set `self.spec` and implement `forward`. Their `state_dict()` keys are the Hugging
    Face checkpoint's keys for the same architecture, so loading is `load_state_dict` after the
    loader has mapped a GGUF or other source onto those names.
    """

    spec: ModelSpec

    def new_cache(self, capacity: int = 64) -> KVCache:
        s = self.spec
        return KVCache(s.n_layers, s.n_kv_heads, s.head_dim, self.kv_dtype, capacity)

    @property
    def kv_dtype(self) -> torch.dtype:
        return (
            next(self.parameters()).dtype
            if next(self.parameters()).is_floating_point()
            else torch.float32
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        caches: list[KVCache],
        counts: list[int],
        logits: Literal["last", "all"] = "last",
    ) -> torch.Tensor:
        """Run the new tokens of several sequences.

        input_ids: [N] long, the new tokens of all sequences concatenated (N = sum(counts)).
        caches:    one KVCache per sequence; sequence i's tokens take positions
                   caches[i].length .. caches[i].length + counts[i] - 1.
        Returns float32 logits: [B, vocab] for each sequence's last token ("last"),
        or [N, vocab] for every token ("all"). Every cache is advanced by its count.
        """
        raise NotImplementedError
