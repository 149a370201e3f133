"""Request and sequence state, shared by the scheduler (token and block bookkeeping, pure
Python) and the core loop (sampling, stopping, detokenization state hung on each sequence).

A request has a prompt and `n` return sequences. Sequence 0 is scheduled alone until its prompt
is computed; the others are then forked from it (they share its blocks, the last partial block
copied on write) and get their first token from the same logits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from fewshot.engine.types import FinishReason, SamplingParams, TokenInfo


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # not holding blocks (new, forked without room, or preempted)
    RUNNING = "running"  # holds blocks; prefilling or decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One return sequence: its tokens (prompt + output), what is computed, where its K/V is."""

    seq_id: int
    request: Request
    index: int
    token_ids: list[int]
    num_prompt: int
    status: SeqStatus = SeqStatus.WAITING
    num_computed: int = 0  # leading tokens whose K/V is in the pool
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # of the sealed leading blocks
    # output side (set by the core loop; the scheduler never reads these)
    sampler: Any = None
    stopping: Any = None
    detok: Any = None
    tokens: list[TokenInfo] = field(default_factory=list)
    emitted: int = 0  # characters of the text already streamed
    finish: FinishReason | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt :]

    @property
    def prefilling(self) -> bool:
        """Still computing its prompt (or, after preemption, its recomputed tokens)."""
        return self.num_computed < self.num_tokens - 1

    @property
    def in_first_prefill(self) -> bool:
        return self.num_output == 0

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request.request_id}, idx={self.index}, "
            f"{self.status.value}, {self.num_computed}/{self.num_tokens}, blocks={self.block_table})"
        )


@dataclass(eq=False)
class Request:
    """What a caller submitted, and its timing; `seqs` are created at submission."""

    request_id: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    logprobs_from: int | None  # first prompt position whose logprob is wanted
    arrival: float
    handle: Any = None
    admitted: float = 0.0
    first_token_at: float | None = None
    cached_tokens: int = 0
    prefill: list[TokenInfo] | None = None  # prompt token infos (prompt logprobs)
    seqs: list[Sequence] = field(default_factory=list)
    forked: bool = False  # the other return sequences exist in the scheduler
    closed: bool = False  # finished or failed: no more events

    @property
    def n(self) -> int:
        return self.params.n

    def live_seqs(self) -> list[Sequence]:
        return [s for s in self.seqs if s.finish is None]

    def cache_limit(self) -> int:
        """Most prompt tokens that may come from the prefix cache (logits needed after)."""
        limit = len(self.prompt_ids) - 1
        if self.logprobs_from is not None:
            limit = min(limit, max(0, self.logprobs_from - 1))
        return limit
