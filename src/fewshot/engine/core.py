"""The engine core: one background thread runs every request through schedule -> run -> update.

Each step (vLLM v1's `EngineCore.step`):
1. take new submissions; end cancelled requests and those past `max_time` (blocks freed);
2. `Scheduler.schedule()`: decodes, prefill chunks and admissions, preempting when the pool is
   full (pure Python: token counts and block ids);
3. `ModelRunner.execute()`: one forward for all scheduled tokens over the paged pool;
4. `Scheduler.update_from_output()`: computed counts advance, full blocks enter the prefix cache;
5. choose tokens (`ModelRunner.sample`), fork the other return sequences of a prompt that just
   finished prefilling, and hand each token to the `OutputProcessor` (text, stop checks, events);
   finished sequences leave the scheduler.

Requests join and leave between steps. An exception while handling one request fails only that
request; a failing batched forward is retried one request at a time to find the culprit (nothing
is committed before a forward succeeds, so a retry just recomputes). Engines still running at
interpreter exit are stopped first, so their thread never dies inside torch.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from typing import Any

import torch

from fewshot.engine.config import EngineConfig
from fewshot.engine.handle import RequestHandle, running_loop
from fewshot.engine.kv_manager import KVCacheManager
from fewshot.engine.output import OutputProcessor
from fewshot.engine.request import Request, Sequence
from fewshot.engine.runner import ModelRunner
from fewshot.engine.sampling import draw_seed
from fewshot.engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from fewshot.engine.types import FinishReason, ParameterError, SamplingParams
from fewshot.models.base import CausalLM
from fewshot.settings import available_cores

log = logging.getLogger(__name__)

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_ENGINES):
        engine.close(timeout=5.0)


class _Auto:
    """Marker type: pick the running event loop, if any."""


AUTO = _Auto()


class Engine:
    """Owns the model runner, the scheduler and the KV manager; one step loop for everything."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Any,
        config: EngineConfig | None = None,
        *,
        start: bool = True,
    ) -> None:
        self.config = config or EngineConfig()
        self.model = model.eval()
        self.spec = model.spec
        self.threads = self.config.threads or available_cores()
        torch.set_num_threads(self.threads)
        self.runner = ModelRunner(self.model, self.config)
        self.runner.warm_up()
        cc = self.config.cache
        self.kv = KVCacheManager(
            self.runner.num_blocks, cc.block_size, cc.prefix_caching and model.paged
        )
        self.scheduler = Scheduler(self.config, self.kv, self.spec.max_positions)
        self.output = OutputProcessor(tokenizer, model.spec)
        self.eos_ids = self.output.eos_ids
        self._lock = threading.Condition()
        self._inbox: deque[Request] = deque()
        self._requests: dict[int, Request] = {}  # submitted, not yet closed
        self._ids = itertools.count()
        self._seq_ids = itertools.count()
        self._closed = False
        self._parked = False
        names = ("requests", "finished", "failed", "prompt_tokens", "steps")
        self.counters = dict.fromkeys((*names, "spec_drafted", "spec_accepted"), 0)
        self._thread: threading.Thread | None = None
        _ENGINES.add(self)
        if start:
            self._thread = threading.Thread(target=self._loop, name="fewshot-engine", daemon=True)
            self._thread.start()

    # -- public ----------------------------------------------------------------------------------

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
        called from one, else none (sync iteration). `stream`: False delivers only the final
        event of each sequence (and errors).
        """
        params.validate()
        prompt_ids = [int(t) for t in prompt_ids]
        self._check(prompt_ids, params)
        if isinstance(loop, _Auto):
            loop = running_loop()
        if logprobs_from is None and params.prompt_logprobs:
            logprobs_from = 1
        rid = next(self._ids)
        handle = RequestHandle(rid, params.n, self.wake, loop, stream)
        seed = params.seed if params.seed is not None else draw_seed()
        request = Request(rid, prompt_ids, params, seed, logprobs_from, time.monotonic(), handle)
        request.seqs = [
            Sequence(next(self._seq_ids), request, i, list(prompt_ids), len(prompt_ids))
            for i in range(params.n)
        ]
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
        self.scheduler.check(len(prompt_ids), params.n)
        vocab = self.spec.vocab_size
        if any(t < 0 or t >= vocab for t in prompt_ids):
            raise ParameterError("inputs", f"token ids must be in [0, {vocab})")

    @property
    def idle(self) -> bool:
        """The step loop is parked on its condition (nothing to do, no polling)."""
        return self._parked

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            waiting = len(self._inbox) + sum(
                1 for r in self._requests.values() if not r.admitted and not r.closed
            )
            running = sum(1 for r in self._requests.values() if r.admitted and not r.closed)
            seqs = len(self.scheduler.running)
            preemptions = self.scheduler.preemptions
        kv = self.kv.stats()
        kv["bytes_touched"] = kv["blocks_touched"] * self.runner.block_bytes  # resident KV
        return {
            "waiting_requests": waiting,
            "running_requests": running,
            "running_sequences": seqs,
            "preemptions": preemptions,
            "generated_tokens": self.output.generated_tokens,
            **self.counters,
            "spec_acceptance": round(
                self.counters["spec_accepted"] / max(1, self.counters["spec_drafted"]), 4
            ),
            "kv_cache": kv,
            "prefix_cache": {k: kv[k] for k in ("hits", "hit_tokens", "hit_rate", "lookups")},
        }

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still in flight finish as "aborted"."""
        with self._lock:
            if self._closed and self._thread is None:
                return
            self._closed = True
            self._lock.notify()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            pending = list(self._inbox) + list(self._requests.values())
            self._inbox.clear()
        for request in pending:
            self._finish_all(request, "aborted")

    # -- loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            with self._lock:
                while not self._closed and not self._inbox and not self._requests:
                    self._parked = True
                    self._lock.wait()
                self._parked = False
                if self._closed:
                    return
            try:
                if not self.step():
                    time.sleep(0.001)  # work exists but none could be planned: do not spin
            except Exception as exc:  # last resort: never let the loop die
                log.exception("engine step failed")
                for request in list(self._requests.values()):
                    self._fail(request, exc)

    @torch.inference_mode()
    def step(self) -> bool:
        """One scheduling step; returns False when there was nothing to run."""
        with self._lock:
            new = list(self._inbox)
            self._inbox.clear()
        for request in new:
            self._requests[request.request_id] = request
            self.scheduler.add(request)
        self._reap()
        out = self.scheduler.schedule()
        for seq in out.exhausted:
            self._finish_seq(seq, "length")
        if not out.chunks:
            return False
        self.counters["steps"] += 1
        self._admitted(out)
        to_sample: list[tuple[Sequence, Any]] = []
        for chunk, logits in self._execute(out):
            if chunk.seq.request.closed:
                continue
            try:
                if chunk.drafts:
                    self._verify(chunk, logits.rows)
                else:
                    to_sample.extend(self._consume(chunk, logits))
            except Exception as exc:
                self._fail(chunk.seq.request, exc)
        items = [(s, row) for s, row in to_sample if not s.request.closed]
        for (seq, _), choice in zip(items, self.runner.sample(items), strict=True):
            if seq.request.closed:
                continue
            try:
                finish = self.output.append(seq, choice)
                if finish is not None:
                    self._finish_seq(seq, finish, pushed=True)
            except Exception as exc:
                self._fail(seq.request, exc)
        return True

    def _admitted(self, out: SchedulerOutput) -> None:
        now = time.monotonic()
        for chunk in out.chunks:
            request = chunk.seq.request
            if not request.admitted:
                request.admitted = now
                self.counters["prompt_tokens"] += len(request.prompt_ids)
                for seq in request.seqs:
                    self.output.init_seq(request, seq)

    def _execute(self, out: SchedulerOutput) -> list[tuple[ScheduledChunk, Any]]:
        """Run the step; on failure retry each request alone and fail only the culprits."""
        self.runner.clear_blocks(out.new_blocks)
        self.runner.copy_blocks(out.copies)
        try:
            results = self.runner.execute(out.chunks)
            self.scheduler.update_from_output(out)
            return list(zip(out.chunks, results, strict=True))
        except Exception as exc:
            by_request: dict[int, list[ScheduledChunk]] = {}
            for chunk in out.chunks:
                by_request.setdefault(chunk.seq.request.request_id, []).append(chunk)
            if len(by_request) == 1:
                self._fail(out.chunks[0].seq.request, exc)
                return []
        done: list[tuple[ScheduledChunk, Any]] = []
        for chunks in by_request.values():
            try:
                results = self.runner.execute(chunks)
            except Exception as exc:
                self._fail(chunks[0].seq.request, exc)
                continue
            self.scheduler.update_from_output(SchedulerOutput(chunks))
            done.extend(zip(chunks, results, strict=True))
        return done

    def _consume(self, chunk: ScheduledChunk, logits: Any) -> list[tuple[Sequence, Any]]:
        """Record prompt logprobs; start the return sequences of a computed prompt. Returns the
        sequences that choose a token from this chunk's last logits row."""
        seq = chunk.seq
        request = seq.request
        if chunk.prompt_logits and logits.rows is not None:
            targets = request.prompt_ids[chunk.start + 1 : chunk.end + 1]
            chosen, tops = self.runner.prompt_logprobs(
                logits.rows, targets, request.params.top_n_tokens
            )
            self.output.record_prompt_logprobs(request, chunk.start, chosen, tops)
        if not chunk.sample:
            return []
        samplers = [seq]
        if seq.index == 0 and not request.forked and seq.in_first_prefill:
            if request.params.prompt_logprobs:
                self.output.prompt_infos(request)
            if request.params.max_new_tokens == 0:
                self._finish_all(request, "length")
                return []
            if request.n > 1:
                for child in request.seqs[1:]:
                    self.runner.fork_state(seq, child)
                self.runner.copy_blocks(self.scheduler.fork(seq))
                samplers = request.live_seqs()
            else:
                request.forked = True
        return [(s, logits.last) for s in samplers]

    def _verify(self, chunk: ScheduledChunk, rows: Any) -> None:
        """Emit the verified drafts and the token after them (speculative decoding)."""
        seq = chunk.seq
        choices, accepted = self.runner.verify(seq, rows, chunk.drafts)
        self.counters["spec_drafted"] += len(chunk.drafts)
        self.counters["spec_accepted"] += accepted
        for choice in choices:
            finish = self.output.append(seq, choice)
            if finish is not None:
                self._finish_seq(seq, finish, pushed=True)
                return
        self.scheduler.accept(chunk, accepted)  # the accepted drafts are in token_ids now

    # -- ending ------------------------------------------------------------------------------------

    def _reap(self) -> None:
        now = time.monotonic()
        for request in list(self._requests.values()):
            if request.handle.cancelled:
                self._finish_all(request, "aborted")
            elif (
                request.params.max_time is not None
                and request.admitted
                and now - request.admitted >= request.params.max_time
            ):
                self._finish_all(request, "time")

    def _finish_seq(self, seq: Sequence, finish: FinishReason, pushed: bool = False) -> None:
        self.scheduler.finish(seq)
        self.runner.release(seq)
        if not pushed:
            self.output.finish(seq, finish)
        request = seq.request
        if not request.live_seqs():
            self._retire(request)

    def _finish_all(self, request: Request, finish: FinishReason) -> None:
        """End every unfinished sequence (also of a request still prefilling or waiting)."""
        for seq in request.seqs:
            if seq.sampler is None:
                self.output.init_seq(request, seq)
            if seq.finish is None:
                self._finish_seq(seq, finish)
            else:
                self.scheduler.finish(seq)
        self._retire(request)

    def _retire(self, request: Request) -> None:
        if request.closed:
            return
        request.closed = True
        if self._requests.pop(request.request_id, None) is not None:
            self.counters["finished"] += 1

    def _fail(self, request: Request, exc: BaseException) -> None:
        """Fail one request: its handle gets an event carrying the error; blocks are freed."""
        if request.closed:
            return
        log.warning("request %d failed: %r", request.request_id, exc)
        self.counters["failed"] += 1
        for seq in request.seqs:
            self.scheduler.finish(seq)
            self.runner.release(seq)
        self.output.fail(request, exc)
        request.closed = True
        self._requests.pop(request.request_id, None)
