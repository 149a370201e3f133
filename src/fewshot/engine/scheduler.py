"""Continuous batching: one background thread runs every generation through a step loop.

Each step (vLLM's `EngineCore.step`, TGI's prefill/decode split merged into one pass):
1. take new submissions; drop cancelled requests and those past `max_time` (caches freed at once);
2. admit waiting requests while the running sequences fit `max_batch_size`: look the prompt up
   in the prefix cache and load the hit into a fresh KVCache;
3. plan ONE forward of the flattened batch: one token for every decoding sequence, plus chunks of
   the prompts still being prefilled (at most `prefill_chunk` prompt tokens per step while
   sequences are decoding, so they are not starved; no limit when nothing decodes). Prompt
   chunks whose per-token logits are needed (prompt logprobs) go in a second, "all"-logits
   forward;
4. choose each sequence's next token (per-request sampler), detokenize incrementally, check stop
   conditions and push a StreamEvent to the request's handle; a prompt that finishes its prefill
   enters the prefix cache, and its n return sequences get copies of its KV cache.

Requests join and leave between steps. An exception while handling one request fails only that
request (its handle gets an event carrying the error); a failing batched forward is retried one
request at a time to find the culprit. Everything model-side runs under `torch.inference_mode`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fewshot.engine.detok import IncrementalDetokenizer
from fewshot.engine.prefix_cache import PrefixCache
from fewshot.engine.sampling import SEED_LIMIT, Choice, Sampler, batch_logprobs, draw_seed
from fewshot.engine.stopping import StoppingCriteria
from fewshot.engine.types import (
    FinishReason,
    GenerationError,
    GenerationResult,
    ParameterError,
    SamplingParams,
    StreamEvent,
    TokenInfo,
    TopToken,
)
from fewshot.models.base import CausalLM, KVCache
from fewshot.settings import available_cores

log = logging.getLogger(__name__)


class _Auto:
    """Marker type: pick the running event loop, if any."""


AUTO = _Auto()

DEFAULT_PREFILL_CHUNK = 512  # prompt tokens per step while other sequences decode
IDLE_PREFILL_TOKENS = 4096  # prompt tokens per step when nothing decodes (bounds activations)


# ---------------------------------------------------------------------------------------------
# handles


class RequestHandle:
    """The caller's side of a request: a stream of StreamEvents, from asyncio or from threads.

    Bound to an event loop (submitted from inside one, or `loop=` given), events arrive through
    `loop.call_soon_threadsafe` into an asyncio.Queue: use `async for ev in handle` and
    `await handle.results()`. Unbound, they go to a thread-safe queue: use `for ev in handle`
    and `handle.wait()`. Iteration ends after every return sequence's last event (the one with
    `result`); an event carrying an error raises GenerationError.

    Streamed token texts add up to `result.text`, with two details: the last event's token may
    be a special one (EOS) carrying the text held back until then (a possible stop-string
    start), and a sequence ended by cancellation or max_time has a last event without token
    (its held-back text is only in `result.text`).

    With `stream=False` only each sequence's last event (the one with `result`) and errors are
    delivered: a caller that only wants `results()` then costs its event loop (or thread) one
    wake-up per sequence instead of one per token. The loop thread competes with the engine's
    torch threads for the CPU and the GIL, so per-token wake-ups it does not need are expensive.
    """

    def __init__(
        self,
        request_id: int,
        n: int,
        engine: Engine,
        loop: asyncio.AbstractEventLoop | None,
        stream: bool = True,
    ) -> None:
        self.request_id = request_id
        self.n = n
        self.stream = stream
        self._engine = engine
        self._loop = loop
        self._aqueue: asyncio.Queue[StreamEvent] | None = asyncio.Queue() if loop else None
        self._queue: queue.Queue[StreamEvent] = queue.Queue()
        self._remaining = n
        self._results: dict[int, GenerationResult] = {}
        self.cancelled = False

    # engine side
    def _push(self, event: StreamEvent) -> None:
        if not self.stream and event.result is None and event.error is None:
            return  # an intermediate token event nobody reads
        if self._loop is None:
            self._queue.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._aqueue.put_nowait, event)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.cancelled = True

    # caller side
    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the engine frees the sequences."""
        if not self.cancelled:
            self.cancelled = True
            self._engine.wake()

    @property
    def done(self) -> bool:
        return self._remaining <= 0

    def _accept(self, event: StreamEvent) -> StreamEvent:
        if event.error is not None:
            self._remaining = 0
            raise GenerationError(event.error)
        if event.result is not None:
            self._results[event.index] = event.result
            self._remaining -= 1
        return event

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._loop is not None:
            raise RuntimeError("this handle is bound to an event loop: use `async for`")
        while not self.done:
            yield self._accept(self._queue.get())

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[StreamEvent]:
        while not self.done:
            if self._aqueue is not None:
                event = await self._aqueue.get()
            else:
                event = await asyncio.to_thread(self._queue.get)
            yield self._accept(event)

    def _ordered(self) -> list[GenerationResult]:
        return [self._results[i] for i in sorted(self._results)]

    def wait(self) -> list[GenerationResult]:
        """Block until every sequence finished; results ordered by index (sync handles)."""
        for _ in self:
            pass
        return self._ordered()

    async def results(self) -> list[GenerationResult]:
        """Every sequence's result, ordered by index."""
        async for _ in self:
            pass
        return self._ordered()


# ---------------------------------------------------------------------------------------------
# per-request state


@dataclass
class _Seq:
    """One return sequence of a request."""

    index: int
    seed: int
    sampler: Sampler
    stopping: StoppingCriteria
    detok: IncrementalDetokenizer
    cache: KVCache | None = None
    token_ids: list[int] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)
    emitted: int = 0  # characters of the text already streamed
    pending: int | None = None  # last chosen token, not yet fed to the model
    finish: FinishReason | None = None


@dataclass
class _Request:
    id: int
    prompt_ids: list[int]
    params: SamplingParams
    handle: RequestHandle
    seed: int
    logprobs_from: int | None  # first prompt position whose logprob is wanted
    arrival: float
    admitted: float = 0.0
    first_token_at: float | None = None
    cache: KVCache | None = None  # the prompt's cache while prefilling
    prefill_pos: int = 0  # prompt tokens already in `cache`
    cached_tokens: int = 0
    prefill: list[TokenInfo] | None = None
    seqs: list[_Seq] = field(default_factory=list)
    closed: bool = False  # finished or failed: no more events

    @property
    def decoding(self) -> bool:
        return bool(self.seqs)

    def live_seqs(self) -> list[_Seq]:
        return [s for s in self.seqs if s.finish is None]


@dataclass
class _Entry:
    """One sequence's slice of a forward: its tokens, cache, and what its logits are for."""

    request: _Request
    cache: KVCache
    tokens: list[int]
    seq: _Seq | None = None  # decode entry; None for a prompt chunk
    start: int = 0  # prompt chunk: first position


# ---------------------------------------------------------------------------------------------
# the engine


class Engine:
    """Owns the model and the prefix cache; runs all requests through one step loop."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Any,
        *,
        namespace: str | None = None,
        prefix_cache_mb: float = 512,
        max_batch_size: int = 32,
        threads: int | None = None,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        block_size: int = 16,
        start: bool = True,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = model.spec
        self.namespace = namespace or f"{self.spec.arch}:{model.kv_dtype}:{id(model)}"
        self.max_batch_size = max_batch_size
        self.prefill_chunk = max(1, prefill_chunk)
        self.threads = threads or available_cores()
        torch.set_num_threads(self.threads)
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20), block_size)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.special_ids = self.eos_ids | set(getattr(tokenizer, "special_ids", None) or ())
        self._piece_cache: dict[int, str] = {}
        self._batched: torch.Tensor | None = None  # the last "last"-logits forward's output

        self._lock = threading.Condition()
        self._inbox: deque[_Request] = deque()
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []  # admitted: prefilling or decoding
        self._ids = itertools.count()
        self._closed = False
        self.counters = {
            "requests": 0,
            "finished": 0,
            "failed": 0,
            "generated_tokens": 0,
            "prompt_tokens": 0,
            "steps": 0,
        }
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._loop, name="fewshot-engine", daemon=True)
            self._thread.start()

    # -- public --------------------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        logprobs_from: int | None = None,
        loop: asyncio.AbstractEventLoop | None | _Auto = AUTO,
        stream: bool = True,
    ) -> RequestHandle:
        """Queue a request (thread-safe); events go to the returned handle.

        `logprobs_from`: report prompt logprobs from this position on (default: all of them when
        `params.prompt_logprobs`, none otherwise); the prefix cache is only used before it.
        `loop`: the event loop to deliver events to; by default the running loop if submit is
        called from one, else none (sync iteration). Pass None to force a sync handle.
        `stream`: False delivers only the final event of each sequence (and errors): for callers
        that only want the results.
        """
        params.validate()
        prompt_ids = [int(t) for t in prompt_ids]
        self._check(prompt_ids, params)
        if isinstance(loop, _Auto):
            loop = _running_loop()
        if logprobs_from is None and params.prompt_logprobs:
            logprobs_from = 1
        rid = next(self._ids)
        handle = RequestHandle(rid, params.n, self, loop, stream)
        seed = params.seed if params.seed is not None else draw_seed()
        request = _Request(rid, prompt_ids, params, handle, seed, logprobs_from, time.monotonic())
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._inbox.append(request)
            self.counters["requests"] += 1
            self._lock.notify()
        return handle

    def _check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise ParameterError("inputs", "the prompt must have at least one token")
        limit = self.spec.max_positions
        if len(prompt_ids) >= limit:
            raise ParameterError(
                "inputs",
                f"the prompt has {len(prompt_ids)} tokens; this model takes fewer than {limit}",
            )
        if params.n > self.max_batch_size:
            raise ParameterError("n", f"must be <= max_batch_size ({self.max_batch_size})")
        vocab = self.spec.vocab_size
        if any(t < 0 or t >= vocab for t in prompt_ids):
            raise ParameterError("inputs", f"token ids must be in [0, {vocab})")

    def wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            waiting = len(self._inbox) + len(self._waiting)
            running = len(self._active)
            seqs = self._running_sequences()
        return {
            "waiting_requests": waiting,
            "running_requests": running,
            "running_sequences": seqs,
            **self.counters,
            "prefix_cache": self.prefix_cache.stats(),
        }

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still in flight finish as "aborted"."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for request in list(self._waiting) + list(self._inbox) + list(self._active):
            self._finish_all(request, "aborted")
        self._waiting.clear()
        self._inbox.clear()
        self._active.clear()

    # -- loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            with self._lock:
                while not self._closed and not self._has_work():
                    self._lock.wait()
                if self._closed:
                    return
            try:
                if not self.step():
                    time.sleep(0.001)  # work exists but none could be planned: do not spin
            except Exception as exc:  # last resort: never let the loop die
                log.exception("engine step failed")
                for request in list(self._active):
                    self._fail(request, exc)

    def _has_work(self) -> bool:
        return bool(self._inbox or self._waiting or self._active)

    @torch.inference_mode()
    def step(self) -> bool:
        """One scheduling step; returns False when there was nothing to do."""
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
        self._reap()
        self._admit()
        last, full = self._plan()
        if not last and not full:
            return False
        self.counters["steps"] += 1
        if last:
            self._run(last, "last")
        if full:
            self._run(full, "all")
        return True

    # -- 1. cancellations and timeouts -------------------------------------------------------------

    def _reap(self) -> None:
        now = time.monotonic()
        for request in list(self._waiting):
            if request.handle.cancelled:
                self._waiting.remove(request)
                self._finish_all(request, "aborted")
        for request in list(self._active):
            if request.handle.cancelled:
                self._finish_all(request, "aborted")
            elif (
                request.params.max_time is not None
                and now - request.admitted >= request.params.max_time
            ):
                self._finish_all(request, "time")

    # -- 2. admission ------------------------------------------------------------------------------

    def _running_sequences(self) -> int:
        return sum(len(r.live_seqs()) if r.decoding else r.params.n for r in self._active)

    def _admit(self) -> None:
        """Admit waiting requests in order while they fit; skip (for now) the ones that are
        better off waiting for a prefix another request is prefilling right now."""
        for request in list(self._waiting):
            if self._active and self._running_sequences() + request.params.n > self.max_batch_size:
                return
            if self._should_wait_for_prefix(request):
                continue
            self._waiting.remove(request)
            try:
                self._start(request)
            except Exception as exc:
                self._fail(request, exc)

    def _cache_limit(self, request: _Request) -> int | None:
        """Longest prefix the request may take from the cache (logits needed after it)."""
        return None if request.logprobs_from is None else max(0, request.logprobs_from - 1)

    def _should_wait_for_prefix(self, request: _Request) -> bool:
        """True when a request being prefilled shares more whole blocks with this one than the
        cache holds: once its prefill is done they are in the cache (few-shot bursts)."""
        if self.prefix_cache.max_bytes <= 0:
            return False
        prompt = request.prompt_ids
        limit = len(prompt) - 1
        if (cap := self._cache_limit(request)) is not None:
            limit = min(limit, cap)
        bs = self.prefix_cache.block_size
        best = 0
        for other in self._active:
            if not other.decoding:
                best = max(best, _common_prefix(prompt, other.prompt_ids, limit))
        shared = best // bs * bs
        return shared > 0 and shared > self.prefix_cache.peek(prompt, self.namespace, limit)

    def _start(self, request: _Request) -> None:
        """Admit: fresh cache, prefix-cache hit loaded, ready to prefill the rest."""
        request.admitted = time.monotonic()
        prompt = request.prompt_ids
        capacity = min(self.spec.max_positions, len(prompt) + request.params.max_new_tokens + 1)
        request.cache = self.model.new_cache(capacity)
        hit = self.prefix_cache.lookup(prompt, self.namespace, self._cache_limit(request))
        PrefixCache.load(hit, request.cache)
        request.prefill_pos = request.cached_tokens = hit.n_tokens
        self.counters["prompt_tokens"] += len(prompt)
        self._active.append(request)

    # -- 3. planning -------------------------------------------------------------------------------

    def _plan(self) -> tuple[list[_Entry], list[_Entry]]:
        """Entries of the "last"-logits forward and of the "all"-logits forward."""
        last: list[_Entry] = []
        for request in self._active:
            for seq in request.live_seqs():
                if seq.pending is not None and seq.cache is not None:
                    last.append(_Entry(request, seq.cache, [seq.pending], seq))
        budget = self.prefill_chunk if last else max(self.prefill_chunk, IDLE_PREFILL_TOKENS)
        full: list[_Entry] = []
        for request in self._active:
            if request.decoding or budget <= 0:
                continue
            entry, wants_all = self._prefill_chunk(request, budget)
            budget -= len(entry.tokens)
            (full if wants_all else last).append(entry)
        return last, full

    def _prefill_chunk(self, request: _Request, budget: int) -> tuple[_Entry, bool]:
        """The next prompt chunk of a prefilling request, and whether it needs all logits."""
        start, end = request.prefill_pos, len(request.prompt_ids)
        end = min(end, start + budget)
        wants_all = False
        if request.logprobs_from is not None:
            first_logit = max(0, request.logprobs_from - 1)  # logits at p-1 score token p
            if start < first_logit:
                end = min(end, first_logit)
            else:
                wants_all = True
        assert request.cache is not None
        tokens = request.prompt_ids[start:end]
        return _Entry(request, request.cache, tokens, None, start), wants_all

    # -- 4. forward and bookkeeping --------------------------------------------------------------

    def _run(self, entries: list[_Entry], which: Literal["last", "all"]) -> None:
        logits = self._forward_isolating(entries, which)
        choices = self._greedy_choices(entries, logits) if which == "last" else {}
        for i, (entry, out) in enumerate(zip(entries, logits, strict=True)):
            if out is None or entry.request.closed:  # failed (maybe via another entry)
                continue
            try:
                self._consume(entry, out, which, choices.get(i))
            except Exception as exc:
                self._fail(entry.request, exc)

    def _greedy_choices(
        self, entries: list[_Entry], logits: list[torch.Tensor | None]
    ) -> dict[int, Choice]:
        """The choices of the plain greedy decode entries (no penalty, no top-n), all at once.

        One argmax and one log_softmax over the stacked rows instead of a few small operators
        and tensor-to-Python conversions per sequence. Row-wise kernels: each row's result is
        the one `Sampler.choose` computes for it alone.
        """
        rows = [
            i
            for i, (entry, out) in enumerate(zip(entries, logits, strict=True))
            if out is not None
            and entry.seq is not None
            and not entry.request.closed
            and entry.seq.sampler.plain_greedy
        ]
        if len(rows) < 2:
            return {}
        batched = self._batched
        if batched is not None and len(rows) == batched.shape[0]:
            stacked = batched  # every row: the forward's own [B, V] tensor
        else:
            stacked = torch.stack([logits[i] for i in rows])  # type: ignore[misc]  # [R, V]
        tokens = torch.argmax(stacked, dim=-1)  # [R]
        chosen = batch_logprobs(stacked).gather(1, tokens[:, None])[:, 0]  # [R]
        return {
            i: Choice(t, lp)
            for i, t, lp in zip(rows, tokens.tolist(), chosen.tolist(), strict=True)
        }

    def _forward_isolating(
        self, entries: list[_Entry], which: Literal["last", "all"]
    ) -> list[torch.Tensor | None]:
        """Logits per entry ([V] for "last", [t, V] for "all"); None where its request failed.

        The batched forward runs first; if it raises, caches are rolled back and each request
        is retried alone, so only the requests that fail by themselves are failed.
        """
        lengths = [e.cache.length for e in entries]
        self._batched = None
        try:
            batched = self._forward(entries, which)
            self._batched = batched  # [B, V] for _greedy_choices (no re-stacking of the rows)
            return self._split(batched, entries, which)
        except Exception as exc:
            if len(entries) == 1:
                self._fail(entries[0].request, exc)
                return [None]
            for entry, length in zip(entries, lengths, strict=True):
                entry.cache.truncate(length)
        out: list[torch.Tensor | None] = [None] * len(entries)
        groups: dict[int, list[int]] = {}
        for i, entry in enumerate(entries):
            groups.setdefault(entry.request.id, []).append(i)
        for idx in groups.values():
            group = [entries[i] for i in idx]
            try:
                parts = self._split(self._forward(group, which), group, which)
            except Exception as exc:
                self._fail(group[0].request, exc)
                continue
            for i, part in zip(idx, parts, strict=True):
                out[i] = part
        return out

    def _forward(self, entries: list[_Entry], which: Literal["last", "all"]) -> torch.Tensor:
        ids = torch.tensor([t for e in entries for t in e.tokens], dtype=torch.long)  # [N]
        counts = [len(e.tokens) for e in entries]
        return self.model(ids, [e.cache for e in entries], counts, logits=which)  # [B|N, V]

    @staticmethod
    def _split(
        logits: torch.Tensor, entries: list[_Entry], which: str
    ) -> list[torch.Tensor | None]:
        if which == "last":
            return list(logits.unbind(0))  # B x [V]
        return list(logits.split([len(e.tokens) for e in entries], dim=0))  # B x [t, V]

    def _consume(
        self, entry: _Entry, logits: torch.Tensor, which: str, choice: Choice | None = None
    ) -> None:
        request = entry.request
        if entry.seq is not None:
            self._decode_token(request, entry.seq, logits, choice)
            return
        if which == "all":
            self._record_prompt_logprobs(request, entry.start, logits)
            logits = logits[-1]
        request.prefill_pos += len(entry.tokens)
        if request.prefill_pos == len(request.prompt_ids):
            self._prefill_done(request, logits)

    def _prefill_done(self, request: _Request, logits: torch.Tensor) -> None:
        """The prompt is in the cache: share it, spawn the n sequences, pick their first tokens."""
        assert request.cache is not None
        if self.prefix_cache.max_bytes > 0:
            self.prefix_cache.insert(request.prompt_ids, request.cache, self.namespace)
        if request.params.prompt_logprobs or request.logprobs_from is not None:
            self._complete_prefill_infos(request)
        request.seqs = [self._new_seq(request, i) for i in range(request.params.n)]
        for i, seq in enumerate(request.seqs):
            seq.cache = request.cache if i == 0 else _copy_cache(self.model, request.cache)
        request.cache = None
        if request.params.max_new_tokens == 0:
            self._finish_all(request, "length")
            return
        for seq in request.seqs:
            self._decode_token(request, seq, logits)

    def _new_seq(self, request: _Request, index: int) -> _Seq:
        params = request.params
        seed = (request.seed + index) % SEED_LIMIT
        stopping = StoppingCriteria(
            params, self.eos_ids, request.admitted, max_length=self.spec.max_positions
        )
        detok = IncrementalDetokenizer(self._decode, request.prompt_ids)
        return _Seq(index, seed, Sampler(params, seed), stopping, detok)

    # -- tokens ------------------------------------------------------------------------------------

    def _decode_token(
        self, request: _Request, seq: _Seq, logits: torch.Tensor, choice: Choice | None = None
    ) -> None:
        """Choose the next token of `seq` from its logits [V] (unless `choice` was made for the
        whole batch already); stream it; maybe finish."""
        if choice is None:
            context = request.prompt_ids + seq.token_ids if seq.sampler.needs_context else ()
            choice = seq.sampler.choose(logits, context)
        if request.first_token_at is None:
            request.first_token_at = time.monotonic()
        self._append(request, seq, choice)

    def _append(self, request: _Request, seq: _Seq, choice: Choice) -> None:
        token = choice.token_id
        special = token in self.special_ids
        piece = "" if special else seq.detok.step(token)
        seq.token_ids.append(token)
        self.counters["generated_tokens"] += 1
        total = len(request.prompt_ids) + len(seq.token_ids)
        finish = seq.stopping.after_token(token, piece, len(seq.token_ids), total)
        top = [TopToken(i, self._piece(i), lp) for i, lp in choice.top]
        seq.tokens.append(TokenInfo(token, self._piece(token), choice.logprob, special, top))
        if finish is not None:
            tail = seq.detok.flush() if finish != "stop_sequence" else ""
            seq.stopping.text.feed(tail)
        stream_text = self._release(seq, final=finish is not None)
        event_token = TokenInfo(token, stream_text, choice.logprob, special, top)
        if finish is None:
            seq.pending = token
            request.handle._push(StreamEvent(seq.index, event_token))
        else:
            self._finish_seq(request, seq, finish, event_token)

    def _release(self, seq: _Seq, final: bool) -> str:
        """Text that may be streamed now (stop-string prefixes are held back until final)."""
        stop_text = seq.stopping.text
        upto = len(stop_text.text) if final else stop_text.releasable()
        piece = stop_text.text[seq.emitted : upto]
        seq.emitted = max(seq.emitted, upto)
        return piece

    def _piece(self, token: int) -> str:
        """A token's own text (special tokens shown), memoised."""
        text = self._piece_cache.get(token)
        if text is None:
            text = _decode_one(self.tokenizer, token)
            if len(self._piece_cache) < 200_000:
                self._piece_cache[token] = text
        return text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    # -- prompt logprobs ------------------------------------------------------------------------

    def _record_prompt_logprobs(self, request: _Request, start: int, logits: torch.Tensor) -> None:
        """Logits [t, V] at prompt positions start.. score prompt tokens start+1.. ."""
        prompt = request.prompt_ids
        if request.prefill is None:
            request.prefill = [TokenInfo(t, self._piece(t), None) for t in prompt]
        n_targets = min(logits.shape[0], len(prompt) - start - 1)
        if n_targets <= 0:
            return
        logprobs = batch_logprobs(logits[:n_targets])  # [n, V]
        targets = torch.tensor(prompt[start + 1 : start + 1 + n_targets])  # [n]
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()  # [n]
        top_n = request.params.top_n_tokens
        tops = torch.topk(logprobs, top_n, dim=-1) if top_n > 0 else None
        for r in range(n_targets):
            pos = start + 1 + r
            if pos < (request.logprobs_from or 0):
                continue
            info = request.prefill[pos]
            info.logprob = chosen[r]
            if tops is not None:
                ids, lps = tops.indices[r].tolist(), tops.values[r].tolist()
                info.top = [TopToken(i, self._piece(i), lp) for i, lp in zip(ids, lps, strict=True)]

    def _complete_prefill_infos(self, request: _Request) -> None:
        if request.prefill is None:  # a one-token prompt has no logprob to report
            request.prefill = [TokenInfo(t, self._piece(t), None) for t in request.prompt_ids]

    # -- finishing -------------------------------------------------------------------------------

    def _result(self, request: _Request, seq: _Seq, finish: FinishReason) -> GenerationResult:
        now = time.monotonic()
        first = request.first_token_at
        return GenerationResult(
            text=seq.stopping.text.text,
            token_ids=list(seq.token_ids),
            tokens=list(seq.tokens),
            finish_reason=finish,
            prompt_tokens=len(request.prompt_ids),
            cached_tokens=request.cached_tokens,
            seed=None if request.params.greedy else seq.seed,
            prefill=request.prefill if request.params.prompt_logprobs else None,
            time_to_first_token=(first - request.admitted) if first and request.admitted else 0.0,
            total_time=now - request.arrival,
            queue_time=(request.admitted - request.arrival)
            if request.admitted
            else now - request.arrival,
        )

    def _finish_seq(
        self, request: _Request, seq: _Seq, finish: FinishReason, token: TokenInfo | None
    ) -> None:
        seq.finish = finish
        seq.cache = None
        seq.pending = None
        request.handle._push(StreamEvent(seq.index, token, self._result(request, seq, finish)))
        if not request.live_seqs():
            self._retire(request)

    def _finish_all(self, request: _Request, finish: FinishReason) -> None:
        """End every unfinished sequence (also of a request still prefilling or waiting)."""
        if request.closed:
            self._retire(request)
            return
        request.cache = None
        if not request.seqs:
            request.seqs = [self._new_seq(request, i) for i in range(request.params.n)]
        for seq in request.live_seqs():
            seq.stopping.text.feed(seq.detok.flush())
            self._finish_seq(request, seq, finish, None)
        self._retire(request)

    def _retire(self, request: _Request) -> None:
        request.closed = True
        if request in self._active:
            self._active.remove(request)
            self.counters["finished"] += 1
        request.cache = None
        for seq in request.seqs:
            seq.cache = None

    def _fail(self, request: _Request, exc: BaseException) -> None:
        """Fail one request: its handle gets an event carrying the error; its caches are freed."""
        log.warning("request %d failed: %r", request.id, exc)
        self.counters["failed"] += 1
        request.closed = True
        if request in self._active:
            self._active.remove(request)
        request.cache = None
        for seq in request.seqs:
            seq.cache = None
            seq.finish = seq.finish or "aborted"
        message = f"{type(exc).__name__}: {exc}"
        request.handle._push(StreamEvent(0, None, None, error=message))


# ---------------------------------------------------------------------------------------------
# helpers


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _eos_ids(model: CausalLM, tokenizer: Any) -> set[int]:
    ids = set(model.spec.eos_token_ids or ())
    tok_eos = getattr(tokenizer, "eos_token_ids", None)
    if callable(tok_eos):
        tok_eos = tok_eos()
    ids.update(int(i) for i in (tok_eos or ()))
    return ids


def _decode_one(tokenizer: Any, token: int) -> str:
    """A single token's text with special tokens shown (tokenizers' and HF-style signatures)."""
    try:
        return tokenizer.decode([token], skip_special_tokens=False)
    except TypeError:
        return tokenizer.decode([token])


def _copy_cache(model: CausalLM, cache: KVCache) -> KVCache:
    """An independent copy of a sequence's cache (for the n > 1 return sequences)."""
    copy = model.new_cache(cache.capacity)
    n = cache.length
    for layer in range(cache.n_layers):
        copy.k[layer][:, :n] = cache.k[layer][:, :n]
        copy.v[layer][:, :n] = cache.v[layer][:, :n]
    copy.length = n
    return copy
