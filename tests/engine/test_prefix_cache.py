"""Prefix cache without a model: plain tensors in a KVCache, exact eviction order."""

from __future__ import annotations

import torch

from fewshot.engine.prefix_cache import PrefixCache
from fewshot.models.base import KVCache

BS = 2  # tokens per block
BLOCK_BYTES = 2 * 1 * BS * 1 * 4  # k and v, 1 layer, 1 head, head_dim 1, float32


def filled_cache(n: int, offset: float = 0.0) -> KVCache:
    """A 1-layer cache whose K at position p is p + offset and V is -(p + offset)."""
    cache = KVCache(n_layers=1, n_kv_heads=1, head_dim=1, dtype=torch.float32)
    pos = torch.arange(n, dtype=torch.float32).view(1, n, 1) + offset
    cache.write(0, pos, -pos)
    cache.advance(n)
    return cache


def insert(pc: PrefixCache, ids: list[int], ns: str = "m") -> int:
    return pc.insert(ids, filled_cache(len(ids)), ns)


def test_lookup_leaves_one_token_and_loads_exact_kv() -> None:
    pc = PrefixCache(max_bytes=10 * BLOCK_BYTES, block_size=BS)
    assert insert(pc, [1, 2, 3, 4, 5]) == 2  # only full blocks
    assert pc.lookup([1, 2, 3, 4], "m").n_tokens == 2  # 4 cached, but one must be computed
    hit = pc.lookup([1, 2, 3, 4, 9, 9], "m")
    assert hit.n_tokens == 4
    cache = KVCache(1, 1, 1, torch.float32)
    PrefixCache.load(hit, cache)
    assert cache.length == 4
    assert cache.k[0][0, :4, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert cache.v[0][0, :4, 0].tolist() == [-0.0, -1.0, -2.0, -3.0]


def test_prefix_must_match_token_exactly_from_the_start() -> None:
    pc = PrefixCache(max_bytes=10 * BLOCK_BYTES, block_size=BS)
    insert(pc, [1, 2, 3, 4, 5, 6])
    assert pc.lookup([1, 2, 3, 5, 5, 6, 7], "m").n_tokens == 2
    assert pc.lookup([0, 2, 3, 4, 5, 6, 7], "m").n_tokens == 0
    assert pc.lookup([3, 4, 5, 6, 7], "m").n_tokens == 0  # same block tokens, other position
    assert pc.lookup([1, 2, 3, 4, 5, 6, 7], "m", limit=3).n_tokens == 2


def test_namespaces_are_disjoint() -> None:
    pc = PrefixCache(max_bytes=10 * BLOCK_BYTES, block_size=BS)
    insert(pc, [1, 2, 3, 4], ns="model-a")
    assert pc.lookup([1, 2, 3, 4, 5], "model-b").n_tokens == 0
    assert pc.lookup([1, 2, 3, 4, 5], "model-a").n_tokens == 4


def test_lru_eviction_order_is_exact_and_leaf_first() -> None:
    pc = PrefixCache(max_bytes=4 * BLOCK_BYTES, block_size=BS)
    insert(pc, [1, 1, 2, 2, 3, 3])  # a1 a2 a3
    assert pc.lru_order() == [(3, 3), (2, 2), (1, 1)]  # leaf oldest, root newest
    insert(pc, [1, 1, 2, 2, 9, 9])  # shares a1 a2, adds b3
    assert pc.lru_order() == [(3, 3), (9, 9), (2, 2), (1, 1)]
    insert(pc, [7, 7, 8, 8])  # needs two blocks: evicts a3 then b3
    assert list(pc.recent_evictions) == [(3, 3), (9, 9)]
    assert pc.lru_order() == [(2, 2), (1, 1), (8, 8), (7, 7)]
    pc.lookup([1, 1, 2, 2, 0], "m")  # touch a1 a2
    assert pc.lru_order() == [(8, 8), (7, 7), (2, 2), (1, 1)]
    insert(pc, [5, 5])
    assert list(pc.recent_evictions)[-1] == (8, 8)
    assert pc.lru_order() == [(7, 7), (2, 2), (1, 1), (5, 5)]
    stats = pc.stats()
    assert stats["evictions"] == 3
    assert stats["cached_bytes"] == 4 * BLOCK_BYTES == pc.nbytes
    assert stats["cached_blocks"] == 4


def test_insert_never_evicts_its_own_prefix() -> None:
    pc = PrefixCache(max_bytes=2 * BLOCK_BYTES, block_size=BS)
    assert insert(pc, [1, 1, 2, 2, 3, 3, 4, 4]) == 2  # only the first two fit
    assert pc.lru_order() == [(2, 2), (1, 1)]
    assert pc.stats()["evictions"] == 0
    assert pc.lookup([1, 1, 2, 2, 3, 3, 4, 4], "m").n_tokens == 4


def test_evicting_a_parent_drops_its_children() -> None:
    pc = PrefixCache(max_bytes=10 * BLOCK_BYTES, block_size=BS)
    insert(pc, [1, 1, 2, 2, 3, 3])
    root = next(b for b in pc.blocks.values() if b.parent is None)
    pc._evict(root.key)
    assert pc.lru_order() == [] and pc.nbytes == 0


def test_stats_count_hits_and_misses() -> None:
    pc = PrefixCache(max_bytes=10 * BLOCK_BYTES, block_size=BS)
    pc.lookup([1, 2, 3], "m")
    insert(pc, [1, 2, 3])
    pc.lookup([1, 2, 3], "m")
    s = pc.stats()
    assert (s["lookups"], s["hits"], s["misses"], s["hit_tokens"]) == (2, 1, 1, 2)


def test_zero_budget_stores_nothing() -> None:
    pc = PrefixCache(max_bytes=0, block_size=BS)
    assert insert(pc, [1, 2, 3, 4]) == 0
    assert pc.lookup([1, 2, 3, 4, 5], "m").n_tokens == 0
