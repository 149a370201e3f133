"""Prefix affinity: which replica should serve a prompt so that its prefix cache hits.

A prompt's first characters are cut into fixed blocks; block j's key hashes block j-1's key
with block j's text (as the engine's prefix cache chains token blocks), so a key names the
whole prefix up to the block's end. `PrefixTable` remembers, per key, the replicas that served
a prompt with that prefix (LRU-bounded). `choose` picks a replica holding the longest
matching prefix unless its load exceeds the least loaded one's by more than `imbalance`; a
prefix nobody holds goes to the least-loaded replica holding the fewest prefixes (ties broken
by rendezvous hashing).

Characters, not tokens: the router runs in the HTTP gateway, in front of every model; it would
need each model's tokenizer and to tokenize every prompt twice. Few-shot prompts share their
prefix as identical *text*, and identical text gives identical character blocks, so character
keys find the same replicas token keys would (a block boundary falling inside a token only
shifts where the matched prefix ends by a few characters).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def _digest(data: bytes) -> int:
    # hashlib, not hash(): keys must agree between processes (hash() is salted per process)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prefix_keys(text: str, block_chars: int, max_blocks: int) -> list[int]:
    """Chained keys of the complete `block_chars`-character blocks of `text` (at most
    `max_blocks`). A prompt shorter than one block has none."""
    keys: list[int] = []
    parent = 0
    for j in range(min(len(text) // block_chars, max_blocks)):
        block = text[j * block_chars : (j + 1) * block_chars]
        parent = _digest(parent.to_bytes(8, "big") + block.encode("utf-8", "surrogatepass"))
        keys.append(parent)
    return keys


def text_key(text: str) -> int:
    """A key of the whole text (spreads prompts with no complete block)."""
    return _digest(text.encode("utf-8", "surrogatepass"))


def rendezvous(key: int, replicas: Iterable[str]) -> str:
    """Highest-random-weight hashing: the replica `key` maps to; moving few keys when the
    replica set changes."""
    return max(replicas, key=lambda r: _digest(key.to_bytes(8, "big") + r.encode()))


@dataclass
class _Entry:
    depth: int  # block index of the key in its prompt (0: the first block)
    replicas: list[str]  # replicas holding the prefix, least recent first


class PrefixTable:
    """Prefix key -> replicas that served it, least recently used keys dropped beyond
    `max_entries`. Counts, per replica, the first-block keys it holds (its "tenants")."""

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._roots: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def roots(self, replica: str) -> int:
        return self._roots.get(replica, 0)

    def longest(self, keys: list[int], live: Iterable[str]) -> tuple[list[str], int]:
        """(the replicas in `live` holding the longest prefix of `keys`, blocks matched)."""
        alive = set(live)
        for j in range(len(keys) - 1, -1, -1):
            entry = self._entries.get(keys[j])
            holders = [r for r in entry.replicas if r in alive] if entry is not None else []
            if holders:
                return holders, j + 1
        return [], 0

    def record(self, keys: list[int], replica: str) -> None:
        """`replica` now holds every prefix in `keys`."""
        for depth, key in enumerate(keys):
            entry = self._entries.pop(key, None) or _Entry(depth, [])
            if replica in entry.replicas:
                entry.replicas.remove(replica)
            elif depth == 0:
                self._roots[replica] = self._roots.get(replica, 0) + 1
            entry.replicas.append(replica)
            self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            _, old = self._entries.popitem(last=False)
            for r in old.replicas:
                self._drop_root(old, r)

    def forget(self, replica: str) -> None:
        """Drop a replica that is gone from every prefix."""
        for key in list(self._entries):
            entry = self._entries[key]
            if replica in entry.replicas:
                entry.replicas.remove(replica)
                if not entry.replicas:
                    del self._entries[key]
        self._roots.pop(replica, None)

    def _drop_root(self, entry: _Entry, replica: str) -> None:
        if entry.depth == 0 and self._roots.get(replica, 0) > 0:
            self._roots[replica] -= 1


def choose(
    keys: list[int],
    fallback_key: int | None,
    loads: Mapping[str, int],
    table: PrefixTable,
    imbalance: int,
) -> tuple[list[str], str]:
    """Replicas in order of preference for a prompt with prefix `keys` (every replica of
    `loads`, which maps replica -> requests in flight), and why the first one:

    1. "held": of the replicas holding the longest known prefix, the least loaded, unless its
       load exceeds the minimum by more than `imbalance`;
    2. "spilled" (a holder is too busy: the hot prefix spills over, and is held by two
       replicas from then on) or "new" (nobody holds it): among replicas within `imbalance`
       of the minimum load, the one holding the fewest prefixes, ties by rendezvous hashing
       of the first key (or `fallback_key`); "unkeyed" without any key: the least loaded;
    3. the rest by load.
    """
    if not loads:
        return [], "none"
    least = min(loads.values())
    holders, _ = table.longest(keys, loads)
    near = [r for r in holders if loads[r] - least <= imbalance]
    if near:
        first, reason = min(near, key=lambda r: loads[r]), "held"
    else:
        pool = [r for r, n in loads.items() if n - least <= imbalance]
        key = keys[0] if keys else fallback_key
        if key is None:
            first, reason = min(pool, key=lambda r: (loads[r], r)), "unkeyed"
        else:
            fewest = min(table.roots(r) for r in pool)
            first = rendezvous(key, [r for r in pool if table.roots(r) == fewest])
            reason = "spilled" if holders else "new"
    rest = sorted((r for r in loads if r != first), key=lambda r: (loads[r], r))
    return [first, *rest], reason
