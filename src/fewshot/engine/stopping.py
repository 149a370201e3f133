"""When a generation ends, and how much of its text may be shown so far.

`StopStrings` matches stop strings on the *decoded generated text* (never on token ids), so a
stop string that spans several tokens, or ends in the middle of one, is still found (TGI #1039,
vLLM #3572). While the tail of the text could still become a stop string, that tail is held back
from a stream; `include_stop` keeps the matched stop string in the final text (TGI) or trims it
(OpenAI). Text after the match, within the same token, is always dropped.

`StoppingCriteria` adds the token-level reasons, checked after each new token in this order:
EOS token (unless `ignore_eos`), stop string, `max_new_tokens`. `max_time` is checked by the
scheduler before each step, counted from the request's admission (queueing does not count), and
finishes with "time" (the HTTP layers may report it as "length",
as transformers' `max_time` does). The engine ends a sequence that fills the model's positions
with "length" too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from fewshot.engine.types import FinishReason, SamplingParams


@dataclass
class StopMatch:
    """A stop string found in the text: where it starts and which one it is."""

    start: int
    stop: str


class StopStrings:
    """Accumulates generated text and watches it for stop strings.

    Feed each new piece of decoded text with `feed`; read what is safe to stream with
    `releasable()`. After a match, `text` is final (kept or trimmed per `include_stop`).
    """

    def __init__(self, stops: Iterable[str], include_stop: bool = True) -> None:
        self.stops = [s for s in stops if s]
        self.include_stop = include_stop
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.match: StopMatch | None = None

    def feed(self, piece: str) -> StopMatch | None:
        """Append `piece`; return the earliest stop string match, if one is now complete."""
        if self.match is not None or not piece:
            return self.match
        # a match must end inside the new piece: it starts at most longest-1 chars before it
        search_from = max(0, len(self.text) - self.longest + 1)
        self.text += piece
        found = self._earliest(search_from)
        if found is not None:
            self.match = found
            end = found.start + (len(found.stop) if self.include_stop else 0)
            self.text = self.text[:end]
        return found

    def _earliest(self, search_from: int) -> StopMatch | None:
        best: StopMatch | None = None
        for stop in self.stops:
            i = self.text.find(stop, search_from)
            if i >= 0 and (best is None or i < best.start):
                best = StopMatch(i, stop)
        return best

    def holdback(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        if self.match is not None or not self.stops:
            return 0
        text = self.text
        for n in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def releasable(self) -> int:
        """How many characters of `text` can be shown now (everything not held back)."""
        return len(self.text) - self.holdback()


class StoppingCriteria:
    """Token-level and text-level stop conditions of one return sequence."""

    def __init__(
        self,
        params: SamplingParams,
        eos_token_ids: Iterable[int],
        start_time: float | None = None,
        max_length: int | None = None,
    ) -> None:
        self.params = params
        self.eos = frozenset(() if params.ignore_eos else eos_token_ids)
        self.start_time = time.monotonic() if start_time is None else start_time
        self.max_length = max_length
        self.text = StopStrings(params.stop, params.include_stop)

    def after_token(
        self, token_id: int, piece: str, n_generated: int, total_length: int
    ) -> FinishReason | None:
        """Record a new token (its newly decoded text `piece`); say whether the sequence ends.

        `n_generated` counts generated tokens including this one; `total_length` counts prompt
        plus generated tokens (to stop at the model's last position).
        """
        if token_id in self.eos:
            return "eos_token"
        if self.text.feed(piece) is not None:
            return "stop_sequence"
        if n_generated >= self.params.max_new_tokens:
            return "length"
        if self.max_length is not None and total_length >= self.max_length:
            return "length"
        return None

    def timed_out(self, now: float | None = None) -> bool:
        """True once `max_time` seconds have passed since `start_time`."""
        if self.params.max_time is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self.start_time >= self.params.max_time
