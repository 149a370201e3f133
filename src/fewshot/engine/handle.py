"""The caller's side of a request: a stream of StreamEvents, consumed from asyncio or threads."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator

from fewshot.engine.types import GenerationError, GenerationResult, StreamEvent


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
        wake: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None,
        stream: bool = True,
    ) -> None:
        self.request_id = request_id
        self.n = n
        self.stream = stream
        self._wake = wake
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
            self._wake()

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


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
