"""The KV block manager: which pool blocks each sequence owns, and the prefix cache over them.

Pure Python over block ids (no tensors): the runner owns the pool, this module decides who uses
which block. Modelled on vLLM v1's block pool and nano-vllm's block manager.

- A block is *sealed* once every one of its `block_size` positions is computed: it then carries
  the chained hash of the tokens up to its end, a BLAKE2b digest of its parent's digest and its
  token ids (vLLM hashes blocks with SHA-256 for the same reason: Python's `hash` of a tuple of
  ints is not randomized and not collision-resistant, so a client could craft a prompt whose
  blocks collide with another client's and be served that client's K/V), and enters the hash
  index. A digest names the whole prefix up to the block's end; the block also keeps its tokens
  and its parent's digest, and a lookup compares them too.
- A prefix-cache hit is a reference: the new sequence's block table starts with the cached
  blocks, their refcounts go up, and no K/V is copied.
- A hit also reaches into the block after the last whole one (as SGLang's token-level radix
  cache does, at our block granularity): among the sealed blocks that continue the hit, the one
  sharing the most leading tokens with what follows has those positions copied into the
  sequence's next block (a `(src, dst, tokens)` copy from `take_copies()`), and they count as
  computed. A prompt whose shared prefix ends mid-block (almost every few-shot prompt) then
  recomputes only its own tokens, not up to a block of the prefix's.
- Blocks with refcount 0 sit in the free queue, oldest first. A sealed one keeps its hash (and
  can still be hit, which takes it out of the queue) until allocation reuses it: that is LRU
  eviction of blocks nobody references. A sequence frees its blocks last-first, so the tail of
  a chain is evicted before its head; unsealed blocks go to the front (reused first).
- `fork` gives a child sequence its parent's blocks by reference; a partial last block cannot
  be shared (both would write into it), so the child gets a fresh one and a copy of its
  computed positions.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from fewshot.engine.request import Sequence


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None
    parent_hash: bytes | None = None
    tokens: tuple[int, ...] = ()
    touched: bool = False  # handed out at least once (its pages of the pool are resident)


@dataclass
class CacheCounters:
    lookups: int = 0
    hits: int = 0
    hit_tokens: int = 0  # whole blocks and partial ones
    partial_hits: int = 0  # hits that copied the leading tokens of a block
    lookup_tokens: int = 0
    evictions: int = 0
    copied_blocks: int = 0
    touched_blocks: int = 0  # distinct blocks ever handed out


PARTIAL_CANDIDATES = 64  # most recent sealed continuations of a hit compared for a partial one


def block_hash(parent: bytes | None, tokens: tuple[int, ...]) -> bytes:
    """The digest naming a block's whole prefix: its parent's digest (none for the first block)
    and its token ids, through BLAKE2b (256 bits)."""
    digest = hashlib.blake2b(parent or b"", digest_size=32)
    digest.update(array("q", tokens).tobytes())
    return digest.digest()


def common_prefix(a: Seq[int], b: Seq[int], limit: int) -> int:
    """How many leading items `a` and `b` share, at most `limit`."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class KVCacheManager:
    """Block allocation, refcounts, prefix-cache index and LRU eviction for one pool."""

    num_blocks: int
    block_size: int = 16
    prefix_caching: bool = True
    blocks: list[Block] = field(init=False)
    free: OrderedDict[int, None] = field(init=False)  # refcount-0 blocks, eviction order
    index: dict[bytes, int] = field(init=False)  # digest -> block id
    # parent digest -> the indexed blocks continuing it, oldest first (partial hits)
    children: dict[bytes | None, OrderedDict[int, None]] = field(init=False)
    pending: list[tuple[int, int, int]] = field(init=False)  # partial hits' copies, not taken
    counters: CacheCounters = field(init=False)

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self.free = OrderedDict((i, None) for i in range(self.num_blocks))
        self.index = {}
        self.children = {}
        self.pending = []
        self.counters = CacheCounters()

    # -- inspection ------------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free, including cached-but-unreferenced)."""
        return len(self.free)

    @property
    def num_cached(self) -> int:
        return len(self.index)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def lookup(self, token_ids: Seq[int], max_tokens: int) -> list[int]:
        """Ids of the cached blocks matching the longest prefix of `token_ids` within
        `max_tokens` tokens (whole blocks only). No side effects."""
        if not self.prefix_caching:
            return []
        bs = self.block_size
        found: list[int] = []
        parent: bytes | None = None
        for j in range(max(0, max_tokens) // bs):
            tokens = tuple(token_ids[j * bs : (j + 1) * bs])
            h = block_hash(parent, tokens)
            bid = self.index.get(h)
            if bid is None:
                break
            block = self.blocks[bid]
            if block.tokens != tokens or block.parent_hash != parent:
                break  # hash collision: not our prefix
            found.append(bid)
            parent = h
        return found

    # -- allocation ------------------------------------------------------------------------------

    def _take(self) -> int:
        bid, _ = self.free.popitem(last=False)
        block = self.blocks[bid]
        if block.hash is not None:  # evict its cached content
            if self.index.get(block.hash) == bid:
                del self.index[block.hash]
                siblings = self.children[block.parent_hash]
                del siblings[bid]
                if not siblings:
                    del self.children[block.parent_hash]
            block.hash, block.parent_hash, block.tokens = None, None, ()
            self.counters.evictions += 1
        if not block.touched:
            block.touched = True
            self.counters.touched_blocks += 1
        block.ref_count = 1
        return bid

    def _ref(self, bid: int) -> None:
        block = self.blocks[bid]
        if block.ref_count == 0:
            del self.free[bid]
        block.ref_count += 1

    def _unref(self, bid: int) -> None:
        block = self.blocks[bid]
        block.ref_count -= 1
        if block.ref_count < 0:
            raise RuntimeError(f"block {bid} freed twice")
        if block.ref_count == 0:
            self.free[bid] = None
            if block.hash is None:
                self.free.move_to_end(bid, last=False)  # nothing cached: reuse first

    def partial_hit(self, token_ids: Seq[int], hit: list[int], max_cached: int) -> tuple[int, int]:
        """(block id, tokens) of the sealed block continuing `hit` that shares the most leading
        tokens with `token_ids` after it, within `max_cached`; (-1, 0) when none does."""
        start = len(hit) * self.block_size
        room = min(self.block_size, max_cached - start)
        parent = self.blocks[hit[-1]].hash if hit else None
        siblings = self.children.get(parent)
        if not self.prefix_caching or room <= 0 or not siblings:
            return -1, 0
        want = tuple(token_ids[start : start + room])
        best, best_len = -1, 0
        for i, bid in enumerate(reversed(siblings)):  # the most recent first
            if i == PARTIAL_CANDIDATES or best_len == len(want):
                break
            tokens = self.blocks[bid].tokens
            if tokens[: best_len + 1] == want[: best_len + 1]:  # it beats the best so far
                best, best_len = bid, common_prefix(tokens, want, room)
        return best, best_len

    def _fits(self, seq: Sequence, hit: list[int]) -> bool:
        """Whether the blocks `seq` needs beyond the cached `hit` are free (a hit on a free
        block takes it off the free queue)."""
        reusable = sum(1 for b in hit if self.blocks[b].ref_count == 0)
        need = self.blocks_for(seq.num_tokens) - len(hit)
        return need <= self.num_free - reusable

    def allocate(self, seq: Sequence, max_cached: int) -> list[int] | None:
        """Give a waiting sequence blocks for all its known tokens, reusing cached ones.

        `max_cached`: most leading tokens that may come from the cache. Sets the block table,
        `num_computed` (the hit) and `block_hashes`. Returns the newly taken block ids (the
        runner clears them), or None when they do not fit (nothing changes then)."""
        if seq.block_table:
            raise ValueError(f"{seq} already holds blocks")
        hit = self.lookup(seq.token_ids, max_cached)
        if not self._fits(seq, hit):
            return None
        for bid in hit:
            self._ref(bid)
        need = self.blocks_for(seq.num_tokens) - len(hit)
        src, partial = self.partial_hit(seq.token_ids, hit, max_cached)
        if partial and self.blocks[src].ref_count == 0 and need >= self.num_free:
            partial = 0  # its source would take the last free block: recompute instead
        if partial:
            self._ref(src)  # held until `take_copies`: nothing may evict it before the copy
        new = [self._take() for _ in range(need)]
        if partial:
            self.pending.append((src, new[0], partial))
        c = self.counters
        c.lookups += 1
        c.lookup_tokens += seq.num_tokens
        if hit or partial:
            c.hits += 1
            c.hit_tokens += len(hit) * self.block_size + partial
            c.partial_hits += partial > 0
        seq.block_table = hit + new
        seq.block_hashes = [self.blocks[b].hash for b in hit]  # type: ignore[misc]
        seq.num_computed = len(hit) * self.block_size + partial
        return new

    def take_copies(self) -> list[tuple[int, int, int]]:
        """The (src, dst, tokens) copies of the partial hits since the last call, for the runner
        to make before the next forward (dst blocks are among the new ones: clear them first).
        Their sources are released now: nothing allocates between here and that copy."""
        copies, self.pending = self.pending, []
        for src, _, _ in copies:
            self._unref(src)
        self.counters.copied_blocks += len(copies)
        return copies

    def append_slots(self, seq: Sequence, num_tokens: int) -> list[int] | None:
        """Make room for positions up to `seq.num_computed + num_tokens`; the new block ids,
        or None (nothing taken) when the pool is out of free blocks."""
        need = self.blocks_for(seq.num_computed + num_tokens) - len(seq.block_table)
        if need <= 0:
            return []
        if need > self.num_free:
            return None
        new = [self._take() for _ in range(need)]
        seq.block_table.extend(new)
        return new

    def seal(self, seq: Sequence) -> None:
        """Hash and index every block of `seq` that is now completely computed."""
        bs = self.block_size
        while len(seq.block_hashes) < seq.num_computed // bs:
            j = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if j else None
            tokens = tuple(seq.token_ids[j * bs : (j + 1) * bs])
            h = block_hash(parent, tokens)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[j]]
            if not self.prefix_caching or block.hash is not None or h in self.index:
                continue  # shared already, or another block holds this prefix
            block.hash, block.parent_hash, block.tokens = h, parent, tokens
            self.index[h] = block.block_id
            self.children.setdefault(parent, OrderedDict())[block.block_id] = None

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int, int]] | None:
        """Share the parent's blocks with `child` (same tokens, same computed count); returns
        the (src, dst, positions) copies the runner must make, or None if no block is free."""
        if child.block_table:
            raise ValueError(f"{child} already holds blocks")
        table = parent.block_table[: self.blocks_for(parent.num_computed)]
        partial = parent.num_computed % self.block_size
        if partial and self.num_free < 1:
            return None
        shared = table[:-1] if partial else table
        for bid in shared:
            self._ref(bid)
        child.block_table = list(shared)
        child.block_hashes = list(parent.block_hashes)
        child.num_computed = parent.num_computed
        copies: list[tuple[int, int, int]] = []
        if partial:
            dst = self._take()
            child.block_table.append(dst)
            copies.append((table[-1], dst, partial))
            self.counters.copied_blocks += 1
        return copies

    def free_seq(self, seq: Sequence) -> None:
        """Drop a sequence's references (last block first); its computed count resets."""
        for bid in reversed(seq.block_table):
            self._unref(bid)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed = 0

    def eviction_order(self) -> list[int]:
        """Free block ids in the order allocation will take them."""
        return list(self.free)

    def stats(self) -> dict[str, int | float]:
        c = self.counters
        used = self.num_blocks - self.num_free
        return {
            "blocks_total": self.num_blocks,
            "blocks_used": used,
            "blocks_free": self.num_free,
            "blocks_cached": self.num_cached,
            "block_size": self.block_size,
            "lookups": c.lookups,
            "hits": c.hits,
            "hit_tokens": c.hit_tokens,
            "lookup_tokens": c.lookup_tokens,
            "hit_rate": round(c.hits / c.lookups, 4) if c.lookups else 0.0,
            "partial_hits": c.partial_hits,
            "cached_tokens": self.num_cached * self.block_size,
            "evictions": c.evictions,
            "copied_blocks": c.copied_blocks,
            "blocks_touched": c.touched_blocks,
        }
