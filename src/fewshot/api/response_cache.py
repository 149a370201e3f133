"""The `use_cache` response cache of the Hugging Face route: identical deterministic requests
(greedy, or sampled with a seed) are answered from a bounded LRU instead of the engine."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any


class ResponseCache:
    """LRU of JSON-serialisable responses keyed by a canonical form of the request."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Any] = OrderedDict()

    @staticmethod
    def key(*parts: Any) -> str:
        return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)

    def get(self, key: str) -> Any | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: str, value: Any) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
