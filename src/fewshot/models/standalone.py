"""Running a model outside the engine: per-sequence caches over a small private block pool.

Tests, parity checks and probes want "feed these tokens to this sequence, give me logits"
without a scheduler. An `Arena` owns a `KVPool` and hands out `KVCache`s (a block table and a
length each); `run` builds the attention metadata for a flattened batch of such caches and calls
the model's forward, exactly as the engine's runner does. The arena grows its pool by doubling
(copying), which the engine never does: this is a convenience, not a serving path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM
from fewshot.models.kv_pool import KVPool


class Arena:
    """A growable pool for a few standalone sequences of one model."""

    def __init__(self, model: CausalLM, block_size: int = 16, blocks: int = 8) -> None:
        self.model = model
        self.block_size = block_size
        self.pool: KVPool | None = None
        self.next_block = 0
        self.next_seq = 0
        if model.paged:
            self.pool = self._new_pool(blocks)

    def _new_pool(self, blocks: int) -> KVPool:
        s = self.model.spec
        pool = KVPool(
            s.n_layers, s.n_kv_heads, s.head_dim, blocks, self.block_size,
            self.model.kv_dtype, self.model.device,
        )  # fmt: skip
        pool.zero_blocks(range(blocks))
        return pool

    def take(self, n: int) -> list[int]:
        """n fresh block ids (growing the pool when needed)."""
        if self.pool is not None and self.next_block + n > self.pool.num_blocks:
            grown = self._new_pool(max(2 * self.pool.num_blocks, self.next_block + n))
            for new, old in zip(grown.k + grown.v, self.pool.k + self.pool.v, strict=True):
                new[:, : old.shape[1]] = old
            self.pool = grown
        ids = list(range(self.next_block, self.next_block + n))
        self.next_block += n
        return ids

    def new_cache(self) -> KVCache:
        self.next_seq += 1
        return KVCache(self, self.next_seq)


class KVCache:
    """One standalone sequence: its block table and how many positions hold K/V."""

    def __init__(self, arena: Arena, seq_id: int) -> None:
        self.arena = arena
        self.seq_id = seq_id
        self.blocks: list[int] = []
        self.length = 0

    def reserve(self, total: int) -> None:
        bs = self.arena.block_size
        need = -(-total // bs) - len(self.blocks)
        if need > 0:
            self.blocks += self.arena.take(need)


def new_cache(model: CausalLM) -> KVCache:
    """A standalone cache with its own arena."""
    return Arena(model).new_cache()


@torch.inference_mode()
def run(
    model: CausalLM,
    input_ids: torch.Tensor | Sequence[int],
    caches: Sequence[KVCache],
    counts: Sequence[int],
    logits: Literal["last", "all"] = "last",
) -> torch.Tensor:
    """Feed sequence i its next `counts[i]` tokens (concatenated in `input_ids`); caches of one
    arena. Returns float32 logits [B, V] (each sequence's last token) or [N, V] ("all")."""
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if len(caches) != len(counts) or sum(counts) != ids.numel():
        raise ValueError("input_ids, caches and counts disagree")
    arena = caches[0].arena
    if any(c.arena is not arena for c in caches):
        raise ValueError("caches batched together must come from one Arena")
    limit = model.spec.max_positions
    for c, n in zip(caches, counts, strict=True):
        if c.length + n > limit:
            raise ValueError(f"{model.spec.arch} cannot go past {limit} positions")
        c.reserve(c.length + n)
    attn = AttentionMetadata.build(
        arena.pool,
        [c.blocks for c in caches],
        [c.length for c in caches],
        counts,
        block_size=arena.block_size,
        seq_ids=[c.seq_id for c in caches],
    )
    positions = torch.cat(
        [torch.arange(c.length, c.length + n) for c, n in zip(caches, counts, strict=True)]
    )
    if logits == "all":
        rows = torch.arange(ids.numel())
    else:
        rows = torch.tensor(attn.query_start[1:]) - 1
    device = model.device
    out = model(ids.to(device), positions.to(device), attn, rows.to(device))
    for c, n in zip(caches, counts, strict=True):
        c.length += n
    return out
