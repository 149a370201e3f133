"""The scheduler: which sequences run in the next step, and how many tokens each (pure Python).

As vLLM v1's scheduler, it only deals in token counts and block ids: every step it gives each
scheduled sequence a number of tokens to compute (1 for a decode, a chunk of the prompt for a
prefill), so chunked prefill falls out of one rule: run `token_ids[num_computed:]`, at most
`budget` of them. One `schedule()` call:

1. **decodes**: every running sequence with its prompt computed gets one token, and a slot for
   it; when the pool has no free block, the youngest running sequence is preempted (its blocks
   freed, back to the front of the queue, recomputed later with whatever the prefix cache
   still holds) until the older ones fit;
2. **prefill chunks** of running sequences still computing their prompt, oldest first, within a
   token budget (`prefill_chunk` while others decode, `idle_prefill_tokens` when none do);
3. **admission** of waiting sequences, oldest first, while the batch has room for all their
   request's return sequences and the pool has blocks for all their tokens (after the prefix
   cache hit). A waiting request whose prompt shares more whole blocks with one being
   prefilled right now than the cache holds lets others pass and waits for it (a few-shot
   burst then prefills its shared examples once).

`update_from_output()` advances the computed counts after the forward and seals full blocks
into the prefix cache; the core loop appends sampled tokens and calls `finish()`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fewshot.engine.config import EngineConfig
from fewshot.engine.kv_manager import KVCacheManager, common_prefix
from fewshot.engine.request import Request, SeqStatus, Sequence
from fewshot.engine.speculation import propose
from fewshot.engine.types import ParameterError


@dataclass
class ScheduledChunk:
    """Tokens `seq.token_ids[start:start + num_tokens]` run this step."""

    seq: Sequence
    start: int
    num_tokens: int
    sample: bool  # the chunk ends at the last known token: the next one gets chosen
    prompt_logits: bool  # every row's logits are wanted (prompt logprobs)
    drafts: list[int] = field(default_factory=list)  # speculative tokens after the known ones

    @property
    def end(self) -> int:
        """Position after the chunk's last token (drafts included)."""
        return self.start + self.num_tokens

    @property
    def tokens(self) -> list[int]:
        known = self.seq.token_ids[self.start : self.end - len(self.drafts)]
        return known + self.drafts


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    new_blocks: list[int] = field(default_factory=list)  # taken this step: to be cleared
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # (src, dst, positions)
    preempted: list[Sequence] = field(default_factory=list)
    exhausted: list[Sequence] = field(default_factory=list)  # cannot grow even alone: finish

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    """Waiting queue, running list and the KV manager; decides every step's batch."""

    def __init__(
        self, config: EngineConfig, kv: KVCacheManager, max_positions: int | None = None
    ) -> None:
        self.config = config
        self.kv = kv
        self.max_positions = max_positions
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: the last is the youngest
        self.preemptions = 0

    # -- queue -----------------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queue a request: its first sequence prefills; the others are forked from it later."""
        self.waiting.append(request.seqs[0])

    def check(self, prompt_tokens: int, n: int) -> None:
        """Raise ParameterError for a request that could never be scheduled."""
        if self.max_positions is not None and prompt_tokens >= self.max_positions:
            raise ParameterError(
                "inputs",
                f"the prompt has {prompt_tokens} tokens; "
                f"this model takes fewer than {self.max_positions}",
            )
        if n > self.config.max_batch_size:
            raise ParameterError("n", f"must be <= max_batch_size ({self.config.max_batch_size})")
        if self.kv.blocks_for(prompt_tokens + 1) > self.kv.num_blocks:
            raise ParameterError(
                "inputs",
                "the prompt needs more KV memory than the pool has "
                f"({self.kv.num_blocks * self.kv.block_size} tokens)",
            )

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def running_slots(self) -> int:
        """Sequences the running requests will have once forked."""
        total = 0
        counted: set[int] = set()
        for seq in self.running:
            req = seq.request
            if req.forked:
                total += 1
            elif req.request_id not in counted:
                counted.add(req.request_id)
                total += len(req.live_seqs())
        return total

    # -- one step --------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self._schedule_decodes(out)
        decoding = bool(out.chunks)
        cfg = self.config
        budget = cfg.prefill_chunk if decoding else max(cfg.prefill_chunk, cfg.idle_prefill_tokens)
        for seq in self.running:
            if budget <= 0:
                break
            if seq.prefilling and seq.status is SeqStatus.RUNNING:
                budget -= self._chunk(out, seq, budget)
        self._admit(out, budget)
        out.copies = self.kv.take_copies()
        return out

    def _chunk(self, out: SchedulerOutput, seq: Sequence, budget: int) -> int:
        start = seq.num_computed
        n = min(seq.num_tokens - start, budget)
        req = seq.request
        wants = req.params.prompt_logprobs or req.logprobs_from is not None
        prompt_logits = wants and seq.index == 0 and seq.in_first_prefill
        sample = start + n == seq.num_tokens
        out.chunks.append(ScheduledChunk(seq, start, n, sample, prompt_logits))
        return n

    def _schedule_decodes(self, out: SchedulerOutput) -> None:
        decoding = [s for s in self.running if s.status is SeqStatus.RUNNING and not s.prefilling]
        speculate = len(decoding) <= self.config.speculative_max_batch
        for seq in decoding:
            if seq.status is not SeqStatus.RUNNING:  # preempted by an earlier one this step
                continue
            drafts = self._drafts(seq) if speculate else []
            while True:
                new = self.kv.append_slots(seq, 1 + len(drafts))
                if new is None and drafts:
                    drafts = []  # no room to speculate: plain decode
                    new = self.kv.append_slots(seq, 1)
                if new is not None:
                    out.new_blocks.extend(new)
                    out.chunks.append(
                        ScheduledChunk(seq, seq.num_computed, 1 + len(drafts), True, False, drafts)
                    )
                    break
                victim = self.running[-1]
                if victim is seq and len(self.running) == 1:
                    out.exhausted.append(seq)  # the whole pool is not enough for it
                    break
                self._preempt(victim, out)
                if victim is seq:
                    break

    def _drafts(self, seq: Sequence) -> list[int]:
        """Prompt-lookup drafts for a decoding sequence, within its token and position limits."""
        k = self.config.speculative_tokens
        if k <= 0:
            return []
        k = min(k, seq.request.params.max_new_tokens - seq.num_output - 1)
        if self.max_positions is not None:
            k = min(k, self.max_positions - seq.num_tokens)
        return propose(seq.token_ids, k, max_ngram=self.config.speculative_max_ngram)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        """Free a running sequence's blocks; it waits (first in line) to be recomputed."""
        self.kv.free_seq(seq)
        self.running.remove(seq)
        out.chunks = [c for c in out.chunks if c.seq is not seq]
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        self.preemptions += 1

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        skipped: list[Sequence] = []
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            req = seq.request
            # a new request brings all its return sequences; a forked/preempted one only itself
            slots = 1 if req.forked or seq.num_output else len(req.live_seqs())
            if self.running and self.running_slots() + slots > self.config.max_batch_size:
                break
            if seq.num_output == 0 and self._should_wait_for_prefix(seq):
                skipped.append(self.waiting.popleft())
                continue
            new = self.kv.allocate(seq, self._cache_limit(seq))
            if new is None:
                break
            self.waiting.popleft()
            out.new_blocks.extend(new)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            if seq.index == 0 and seq.in_first_prefill:
                req.cached_tokens = seq.num_computed
            budget -= self._chunk(out, seq, budget)
        self.waiting.extendleft(reversed(skipped))

    def _cache_limit(self, seq: Sequence) -> int:
        req = seq.request
        if seq.in_first_prefill and seq.index == 0:
            return req.cache_limit()
        return seq.num_tokens - 1  # recomputation: everything but the token to feed

    def _should_wait_for_prefix(self, seq: Sequence) -> bool:
        """True when a sequence being prefilled shares more whole blocks with this one than the
        cache holds: once its prefill is done they are in the cache."""
        if not self.kv.prefix_caching:
            return False
        limit = self._cache_limit(seq)
        bs = self.kv.block_size
        best = 0
        for other in self.running:
            if other.prefilling:
                best = max(best, common_prefix(seq.token_ids, other.token_ids, limit))
        shared = best // bs * bs
        return shared > 0 and shared > len(self.kv.lookup(seq.token_ids, limit)) * bs

    # -- after the forward -------------------------------------------------------------------------

    def update_from_output(self, out: SchedulerOutput) -> None:
        """The chunks ran: their K/V is in the pool; seal the blocks that filled up. Chunks
        with drafts wait for `accept` (only verified tokens may enter the cache)."""
        for chunk in out.chunks:
            if not chunk.drafts:
                self._advance(chunk.seq, chunk.start, chunk.end)

    def accept(self, chunk: ScheduledChunk, accepted: int) -> None:
        """`accepted` of the chunk's drafts were verified: their K/V (and the fed token's) stay."""
        self._advance(chunk.seq, chunk.start, chunk.end - len(chunk.drafts) + accepted)

    def _advance(self, seq: Sequence, start: int, end: int) -> None:
        if seq.status is SeqStatus.RUNNING and seq.num_computed == start:
            seq.num_computed = end
            self.kv.seal(seq)

    def fork(self, parent: Sequence) -> list[tuple[int, int, int]]:
        """Start the other return sequences of `parent`'s request from its computed prompt.

        Each child shares the parent's blocks; one that finds no free block waits in the queue
        (it is then recomputed, mostly from the prefix cache). Returns the block copies."""
        req = parent.request
        req.forked = True
        copies: list[tuple[int, int, int]] = []
        for child in req.seqs:
            if child is parent or child.finish is not None:
                continue
            pairs = self.kv.fork(parent, child)
            if pairs is None:
                self.waiting.appendleft(child)
                continue
            copies.extend(pairs)
            child.status = SeqStatus.RUNNING
            self.running.append(child)
        return copies

    def finish(self, seq: Sequence) -> None:
        """Forget a sequence (finished, cancelled or failed) and free its blocks."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free_seq(seq)
        seq.status = SeqStatus.FINISHED

    def stats(self) -> dict[str, int]:
        return {
            "waiting_sequences": len(self.waiting),
            "running_sequences": len(self.running),
            "preemptions": self.preemptions,
        }
