"""Request -> engine plumbing shared by every wire format.

Tokenize and check the limits (`Limits`, `prepare`), run one or several generations
(`generate`), or stream one (`Stream`: engine events, keep-alive ticks, cancel on close); count
everything in the metrics; hold an admission slot for the life of the request (`RequestScope`).
Routes only translate their schema to `SamplingParams` and the results back to their format.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fewshot.api.errors import GenerationFailed, Issue, ValidationFailed
from fewshot.api.state import AppState, ServedModel
from fewshot.engine.types import (
    GenerationError,
    GenerationResult,
    ParameterError,
    SamplingParams,
    StreamEvent,
)

if TYPE_CHECKING:
    from fewshot.engine.llm import LLM

COMPUTE_TYPE = "cpu"


Rename = Callable[[str], str]


def same_name(param: str) -> str:
    return param


@dataclass
class Limits:
    """Token limits for one model: the settings, capped by the model's context."""

    max_input: int
    max_total: int

    @classmethod
    def of(cls, state: AppState, llm: LLM) -> Limits:
        s = state.settings
        positions = int(getattr(llm, "max_positions", 0) or 0) or s.max_total_tokens
        total = min(s.max_total_tokens, positions)
        return cls(max_input=min(s.max_input_tokens, max(1, total - 1)), max_total=total)


@dataclass
class Job:
    """One prompt to run: its text (for return_full_text / echo), its ids and its parameters."""

    prompt: str
    ids: list[int]
    params: SamplingParams


def encode(llm: LLM, text: str) -> list[int]:
    return list(llm.tokenizer.encode(text))


def tokenize(llm: LLM, text: str) -> list[dict[str, Any]]:
    """TGI /tokenize tokens of `text`: the ids the engine runs (and the input limit counts),
    so a BOS the tokenizer adds comes first, as `{id, text: "", start: 0, stop: 0}`."""
    tokens = list(llm.tokenize(text))
    ids = encode(llm, text)
    if len(ids) == len(tokens) + 1 and [t["id"] for t in tokens] == ids[1:]:
        tokens.insert(0, {"id": ids[0], "text": "", "start": 0, "stop": 0})
    return tokens


def check_prompt(ids: list[int], limits: Limits, field: str) -> None:
    """Empty or over-long prompts are a validation error naming `field`."""
    if not ids:
        raise ValidationFailed.one(field, "must not be empty")
    if len(ids) > limits.max_input:
        raise ValidationFailed.one(
            field,
            f"must have at most {limits.max_input} tokens. Given: {len(ids)}",
            "length",
        )


def budget_new_tokens(
    requested: int | None, prompt_len: int, limits: Limits, field: str, default: int
) -> int:
    """The max_new_tokens to run: `requested` if it fits in max_total, else a validation error;
    without a request, `default` shortened to what fits."""
    room = limits.max_total - prompt_len
    if requested is None:
        return max(0, min(default, room))
    if requested > room:
        name = field.rsplit(".", 1)[-1]
        raise ValidationFailed.one(
            field,
            f"`inputs` tokens + `{name}` must be <= {limits.max_total}. "
            f"Given: {prompt_len} `inputs` tokens and {requested} `{name}`",
            "length",
        )
    return requested


def prepare(
    llm: LLM,
    limits: Limits,
    prompt: str | list[int],
    params: SamplingParams,
    requested_new: int | None,
    *,
    input_field: str,
    default_new: int,
    rename: Rename = same_name,
) -> Job:
    """Tokenize (or take) the prompt, check it, fix max_new_tokens, validate the parameters."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValidationFailed.one(input_field, "must not be empty")
        ids, text = encode(llm, prompt), prompt
    else:
        vocab = int(getattr(getattr(llm, "spec", None), "vocab_size", 0) or 0)
        if any(t < 0 or (vocab and t >= vocab) for t in prompt):
            bound = f"[0, {vocab})" if vocab else ">= 0"
            raise ValidationFailed.one(input_field, f"token ids must be in {bound}")
        ids, text = list(prompt), llm.tokenizer.decode(list(prompt))
    check_prompt(ids, limits, input_field)
    new_field = rename("max_new_tokens")
    params.max_new_tokens = budget_new_tokens(
        requested_new, len(ids), limits, new_field, default_new
    )
    validate(params, rename)
    return Job(text, ids, params)


def validate(params: SamplingParams, rename: Rename = same_name) -> None:
    try:
        params.validate()
    except ParameterError as exc:
        raise parameter_issue(exc, rename) from exc


def parameter_issue(exc: ParameterError, rename: Rename = same_name) -> ValidationFailed:
    """An engine ParameterError as a validation error naming the field in the wire format."""
    return ValidationFailed([Issue(rename(exc.param), exc.message)])


# --- per-request bookkeeping ------------------------------------------------------------------


class RequestScope:
    """An admitted request: holds a concurrency slot, counts it and times it until `finish()`.

    Used as `with RequestScope(...) as scope:` around a whole route: leaving the block
    finishes it -- unless a `Stream` took it over (the response then finishes it when the
    stream closes); an exception closes that stream too.
    """

    def __init__(self, state: AppState, model: ServedModel, route: str) -> None:
        self.slot = state.admission.acquire()  # 429 at once when full
        self.state, self.model, self.route = state, model, route
        self.started = time.monotonic()
        self._open = True
        self.stream: Stream | None = None
        state.metrics.inflight.inc()
        state.metrics.requests.labels(model.name, route).inc()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def finish(self) -> None:
        if self._open:
            self._open = False
            self.slot.release()
            m = self.state.metrics
            m.inflight.dec()
            m.duration.labels(self.model.name, self.route).observe(self.elapsed)

    def __enter__(self) -> RequestScope:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.stream is None:
            self.finish()
        elif exc_type is not None:
            self.stream.close()


def record(state: AppState, model: ServedModel, results: list[GenerationResult]) -> None:
    """Metrics of one prompt's finished sequences (the prompt is counted once)."""
    if not results:
        return
    state.metrics.record_prompt(model.name, results[0].prompt_tokens, results[0].cached_tokens)
    for r in results:
        state.metrics.record_result(model.name, r)


def timing_headers(scope: RequestScope, results: list[list[GenerationResult]]) -> dict[str, str]:
    """TGI / HF response headers: compute time, prompt and generated tokens, prefix-cache hits."""
    firsts = [rs[0] for rs in results if rs]
    flat = [r for rs in results for r in rs]
    generated = sum(r.generated_tokens for r in flat)
    total = scope.elapsed
    return {
        "x-compute-type": COMPUTE_TYPE,
        "x-compute-time": f"{total:.6f}",
        "x-total-time": str(int(total * 1000)),
        "x-queue-time": str(int(max((r.queue_time for r in flat), default=0) * 1000)),
        "x-inference-time": str(int(max((r.total_time for r in flat), default=0) * 1000)),
        "x-time-per-token": str(int(total * 1000 / generated) if generated else 0),
        "x-prompt-tokens": str(sum(r.prompt_tokens for r in firsts)),
        "x-generated-tokens": str(generated),
        "x-prefix-cache-tokens": str(sum(r.cached_tokens for r in firsts)),
    }


# --- running ----------------------------------------------------------------------------------


def submit(llm: LLM, job: Job, rename: Rename = same_name, *, stream: bool = True) -> Any:
    """Queue `job` on the engine (bound to the running loop); ParameterError -> validation.

    `stream=False`: the handle gets only the final events (see RequestHandle): a non-streaming
    request then wakes the event loop once, not once per token.
    """
    try:
        return llm.submit(job.ids, job.params, stream=stream)
    except ParameterError as exc:
        raise parameter_issue(exc, rename) from exc


async def generate(
    state: AppState,
    model: ServedModel,
    llm: LLM,
    jobs: list[Job],
    rename: Rename = same_name,
) -> list[list[GenerationResult]]:
    """Run every job concurrently (one engine request each); a list of results per job."""
    handles = []
    try:
        for job in jobs:
            handles.append(submit(llm, job, rename, stream=False))
        outputs = await asyncio.gather(*(h.results() for h in handles))
    except GenerationError as exc:
        raise GenerationFailed(f"generation failed: {exc}") from exc
    finally:
        for h in handles:
            if not h.done:
                h.cancel()
    results = [list(rs) for rs in outputs]
    for rs in results:
        record(state, model, rs)
    return results


_END = object()


class Stream:
    """Streamed generations of one request (one job per prompt, merged in arrival order).

    `events()` yields (job index, StreamEvent) -- or None after `keepalive` idle seconds, for a
    keep-alive comment. `close()` (idempotent, run by the response however it ends) cancels
    the engine requests still running, counts an abandoned stream and finishes the scope.
    """

    def __init__(
        self,
        state: AppState,
        scope: RequestScope,
        llm: LLM,
        jobs: list[Job],
        rename: Rename = same_name,
    ) -> None:
        self.state, self.scope, self.jobs = state, scope, jobs
        self.handles: list[Any] = []
        self.finished = False
        self._closed = False
        try:
            for job in jobs:
                self.handles.append(submit(llm, job, rename))
        except BaseException:
            for h in self.handles:
                h.cancel()
            raise
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pumps: list[asyncio.Task[None]] = []
        scope.stream = self

    async def _pump(self, i: int) -> None:
        try:
            async for ev in self.handles[i]:
                self._queue.put_nowait((i, ev))
            self._queue.put_nowait((i, _END))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported in-stream by the route
            self._queue.put_nowait((i, exc))

    async def events(self) -> AsyncIterator[tuple[int, StreamEvent] | None]:
        keepalive = self.state.settings.sse_keepalive_s
        self._pumps = [asyncio.create_task(self._pump(i)) for i in range(len(self.handles))]
        results: list[list[GenerationResult]] = [[] for _ in self.handles]
        open_jobs = len(self.handles)
        getter: asyncio.Task[Any] | None = None
        try:
            while open_jobs:
                getter = getter or asyncio.create_task(self._queue.get())
                done, _ = await asyncio.wait({getter}, timeout=keepalive)
                if not done:
                    yield None
                    continue
                (i, item), getter = getter.result(), None
                if item is _END:
                    open_jobs -= 1
                    continue
                if isinstance(item, Exception):
                    self.finished = True
                    raise GenerationFailed(f"generation failed: {item}") from item
                if item.result is not None:
                    results[i].append(item.result)
                yield i, item
            self.finished = True
            for rs in results:
                record(self.state, self.scope.model, rs)
        finally:
            if getter is not None:
                getter.cancel()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.finished:
            for h in self.handles:
                h.cancel()
            self.state.metrics.cancelled.labels(self.scope.model.name).inc()
        for task in self._pumps:
            if not task.done():
                task.cancel()
        self.scope.finish()


def header_flag(headers: Any, name: str) -> bool | None:
    """A boolean request header (`x-wait-for-model: true`, the 2024 HF API's options)."""
    value = headers.get(name)
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


def check_count(values: list[Any], limit: int, field: str, what: str) -> None:
    if len(values) > limit:
        raise ValidationFailed.one(field, f"supports up to {limit} {what}. Given: {len(values)}")
