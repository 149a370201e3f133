"""Choosing the demonstrations of each query, leave-one-out.

Every query of an evaluation is also a row of the data, and its demonstrations are drawn from
the *other* rows: never the query itself, nor another row with the same text (a duplicate would
hand the model the answer).

* ``random``: one seeded, label-balanced order of the rows per seed; a query's k examples are
  the first k rows of that order, shuffled (same shuffle for every query); a query among them
  is replaced by the next row with its label. Most queries of a seed therefore share one
  prompt prefix, which the engine's prefix cache serves.
* ``similar``: the k rows nearest to the query by embedding cosine similarity (KATE, Liu et al.
  2021), ordered nearest *last*, next to the query. Deterministic: seeds do not change it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

SELECTS = ("random", "similar")


def balanced_order(labels: Sequence[str | None], rng: random.Random) -> list[int]:
    """Row indices in a shuffled order; with labels, a round robin over labels (seeded order)."""
    if not labels or all(lab is None for lab in labels):
        order = list(range(len(labels)))
        rng.shuffle(order)
        return order
    by_label: dict[str | None, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    keys = sorted(by_label, key=str)
    rng.shuffle(keys)
    for key in keys:
        rng.shuffle(by_label[key])
    out: list[int] = []
    for j in range(max(len(v) for v in by_label.values())):
        out += [by_label[key][j] for key in keys if j < len(by_label[key])]
    return out


def _allowed(texts: Sequence[str], query: int, candidate: int) -> bool:
    return candidate != query and texts[candidate] != texts[query]


def random_demos(
    texts: Sequence[str],
    labels: Sequence[str | None],
    queries: Sequence[int],
    k: int,
    seed: int,
) -> list[list[int]]:
    """Each query's k demonstration indices (see the module docstring)."""
    if k == 0:
        return [[] for _ in queries]
    order = balanced_order(labels, random.Random(seed))
    base = order[:k]
    out = []
    for q in queries:
        picked, used = [], set(base)
        for c in base:  # the query (or its duplicate) is replaced by a row with the same label
            if not _allowed(texts, q, c):
                free = [x for x in order if x not in used and _allowed(texts, q, x)]
                same = [x for x in free if labels[x] == labels[c]]
                c = (same or free or [None])[0]
                if c is None:
                    continue
                used.add(c)
            picked.append(c)
        random.Random(seed * 1009 + k).shuffle(picked)  # the same shuffle for every query
        out.append(picked)
    return out


def nearest_demos(
    vectors: np.ndarray, texts: Sequence[str], queries: Sequence[int], k: int
) -> list[list[int]]:
    """Each query's k nearest rows by cosine similarity (vectors L2-normalised), nearest last."""
    if k == 0:
        return [[] for _ in queries]
    sims = vectors[list(queries)] @ vectors.T  # [queries, rows]
    out = []
    for row, q in zip(sims, queries, strict=True):
        ranked = np.argsort(-row, kind="stable")
        picked = [int(c) for c in ranked[: k + 8] if _allowed(texts, q, int(c))][:k]
        if len(picked) < k:
            picked = [int(c) for c in ranked if _allowed(texts, q, int(c))][:k]
        out.append(picked[::-1])  # nearest last, right before the query
    return out
