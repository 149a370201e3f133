"""Token-exact prefix cache shared by all requests: K/V of prompt blocks, LRU under a byte budget.

A prompt is cut into fixed blocks of `block_size` token ids. Block j's key chains the hash of its
parent (block j-1) with its own tokens and the model namespace, as vLLM's `hash_block_tokens`:

    key_j = hash((namespace, key_{j-1}, tokens_j))          key_{-1} = None

so a key names the whole prefix up to the block's end. Each block also stores its tokens and
its parent, and lookups compare them, so a hash collision can never serve wrong K/V. A block
holds copies of its positions' keys and values for every layer (`KVCache.slice`), each
[n_kv_heads, block_size, head_dim].

LRU order: a lookup or insert touches its chain leaf first and root last, so a parent is always
more recent than its children and eviction removes leaves first (a parent evicted with children
would strand them; should that ever happen they are dropped with it). Different namespaces (model,
dtype) never share blocks (SGLang's `extra_key`).

Nothing here needs a model: tests drive it with a `KVCache` filled with plain tensors.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from fewshot.models.base import KVCache

BlockKey = int


@dataclass(eq=False)
class Block:
    """One cached block: its tokens, chain position and per-layer K/V [n_kv_heads, bs, head_dim]."""

    key: BlockKey
    parent: Block | None
    tokens: tuple[int, ...]
    end: int  # prompt position just after this block
    ks: list[torch.Tensor]
    vs: list[torch.Tensor]
    nbytes: int
    children: set[BlockKey] = field(default_factory=set)


@dataclass
class PrefixHit:
    """Result of a lookup: the matched blocks, root first. `n_tokens` = their total length."""

    blocks: list[Block]

    @property
    def n_tokens(self) -> int:
        return self.blocks[-1].end if self.blocks else 0


@dataclass
class PrefixCacheStats:
    """Counters since creation (tokens are prompt tokens; bytes are K/V bytes)."""

    lookups: int = 0
    hits: int = 0
    misses: int = 0
    hit_tokens: int = 0
    lookup_tokens: int = 0
    inserted_blocks: int = 0
    evictions: int = 0


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class PrefixCache:
    """Chained block hashes -> K/V blocks, LRU-evicted to stay under `max_bytes`."""

    def __init__(self, max_bytes: int, block_size: int = 16) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.max_bytes = max(0, int(max_bytes))
        self.block_size = block_size
        self.blocks: OrderedDict[BlockKey, Block] = OrderedDict()  # least recent first
        self.nbytes = 0
        self.counters = PrefixCacheStats()
        self.recent_evictions: deque[tuple[int, ...]] = deque(maxlen=64)  # tokens, oldest first

    # -- keys --------------------------------------------------------------------------------

    @staticmethod
    def block_key(namespace: Hashable, parent: Block | None, tokens: tuple[int, ...]) -> BlockKey:
        return hash((namespace, parent.key if parent is not None else None, tokens))

    def _child(
        self, namespace: Hashable, parent: Block | None, tokens: tuple[int, ...]
    ) -> Block | None:
        """The cached block continuing `parent` with `tokens`, verified token-exactly."""
        block = self.blocks.get(self.block_key(namespace, parent, tokens))
        if block is None or block.tokens != tokens or block.parent is not parent:
            return None
        return block

    def _block_tokens(self, token_ids: Sequence[int], j: int) -> tuple[int, ...]:
        bs = self.block_size
        return tuple(int(t) for t in token_ids[j * bs : (j + 1) * bs])

    # -- lookup / load -----------------------------------------------------------------------

    def lookup(
        self, token_ids: Sequence[int], namespace: Hashable = "", limit: int | None = None
    ) -> PrefixHit:
        """Longest cached block-aligned prefix of `token_ids`, leaving >= 1 token to compute.

        `limit` caps the prefix length further (e.g. to compute logits from some position on).
        Counts a hit or a miss and touches the matched blocks.
        """
        hit = self._match(token_ids, namespace, limit)
        self._touch(hit.blocks)
        self._count_lookup(len(token_ids), hit.n_tokens)
        return hit

    def peek(
        self, token_ids: Sequence[int], namespace: Hashable = "", limit: int | None = None
    ) -> int:
        """Tokens `lookup` would return now, without counting or touching anything."""
        return self._match(token_ids, namespace, limit).n_tokens

    def _match(self, token_ids: Sequence[int], namespace: Hashable, limit: int | None) -> PrefixHit:
        usable = len(token_ids) - 1 if limit is None else min(len(token_ids) - 1, limit)
        blocks: list[Block] = []
        parent: Block | None = None
        for j in range(max(0, usable) // self.block_size):
            block = self._child(namespace, parent, self._block_tokens(token_ids, j))
            if block is None:
                break
            blocks.append(block)
            parent = block
        return PrefixHit(blocks)

    def _count_lookup(self, n_prompt: int, n_hit: int) -> None:
        c = self.counters
        c.lookups += 1
        c.lookup_tokens += n_prompt
        c.hit_tokens += n_hit
        if n_hit:
            c.hits += 1
        else:
            c.misses += 1

    @staticmethod
    def load(hit: PrefixHit, cache: KVCache) -> None:
        """Write the hit's K/V into an empty cache and set its length to `hit.n_tokens`."""
        if cache.length != 0:
            raise ValueError("load() needs an empty cache")
        if not hit.blocks:
            return
        cache.reserve(hit.n_tokens)
        start = 0
        for block in hit.blocks:
            end = block.end
            for layer in range(cache.n_layers):
                cache.k[layer][:, start:end] = block.ks[layer]
                cache.v[layer][:, start:end] = block.vs[layer]
            start = end
        cache.length = hit.n_tokens

    # -- insert / evict ----------------------------------------------------------------------

    def insert(self, token_ids: Sequence[int], cache: KVCache, namespace: Hashable = "") -> int:
        """Store the full blocks of `token_ids` whose K/V `cache` holds; return blocks added.

        Blocks already cached are only touched. Stops at the first block that does not fit the
        budget without evicting blocks of this same prefix.
        """
        n_blocks = min(len(token_ids), cache.length) // self.block_size
        chain: list[Block] = []
        added = 0
        parent: Block | None = None
        for j in range(n_blocks):
            tokens = self._block_tokens(token_ids, j)
            block = self._child(namespace, parent, tokens)
            if block is None:
                block = self._new_block(namespace, parent, tokens, cache, j, chain)
                if block is None:
                    break
                added += 1
            else:
                self.blocks.move_to_end(block.key)  # keep it away from the eviction end
            chain.append(block)
            parent = block
        self._touch(chain)
        self.counters.inserted_blocks += added
        return added

    def _new_block(
        self,
        namespace: Hashable,
        parent: Block | None,
        tokens: tuple[int, ...],
        cache: KVCache,
        j: int,
        chain: list[Block],
    ) -> Block | None:
        key = self.block_key(namespace, parent, tokens)
        if key in self.blocks:  # hash collision with a different prefix: leave it
            return None
        start, end = j * self.block_size, (j + 1) * self.block_size
        ks, vs = cache.slice(start, end)  # per layer [n_kv_heads, bs, head_dim]
        nbytes = _tensor_bytes(ks) + _tensor_bytes(vs)
        if not self._make_room(nbytes, protected={b.key for b in chain}):
            return None
        block = Block(key, parent, tokens, end, ks, vs, nbytes)
        self.blocks[key] = block
        if parent is not None:
            parent.children.add(key)
        self.nbytes += nbytes
        return block

    def _make_room(self, nbytes: int, protected: set[BlockKey]) -> bool:
        """Evict least recently used blocks until `nbytes` more fit; False if impossible."""
        if nbytes > self.max_bytes:
            return False
        while self.nbytes + nbytes > self.max_bytes:
            victim_key = next(iter(self.blocks))
            if victim_key in protected:
                return False
            self._evict(victim_key)
        return True

    def _evict(self, key: BlockKey) -> None:
        block = self.blocks.pop(key, None)
        if block is None:
            return
        for child in list(block.children):  # unreachable without their parent
            self._evict(child)
        if block.parent is not None:
            block.parent.children.discard(key)
        self.nbytes -= block.nbytes
        self.counters.evictions += 1
        self.recent_evictions.append(block.tokens)

    def _touch(self, chain: list[Block]) -> None:
        """Mark a root-first chain as most recent, leaf first so the root ends up newest."""
        for block in reversed(chain):
            self.blocks.move_to_end(block.key)

    # -- inspection --------------------------------------------------------------------------

    def lru_order(self) -> list[tuple[int, ...]]:
        """Tokens of every cached block, least recently used first (the eviction order)."""
        return [b.tokens for b in self.blocks.values()]

    def clear(self) -> None:
        self.blocks.clear()
        self.nbytes = 0

    def stats(self) -> dict[str, int | float]:
        c = self.counters
        return {
            "lookups": c.lookups,
            "hits": c.hits,
            "misses": c.misses,
            "hit_tokens": c.hit_tokens,
            "lookup_tokens": c.lookup_tokens,
            "hit_rate": round(c.hits / c.lookups, 4) if c.lookups else 0.0,
            "cached_blocks": len(self.blocks),
            "cached_tokens": len(self.blocks) * self.block_size,
            "cached_bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "inserted_blocks": c.inserted_blocks,
            "evictions": c.evictions,
        }
