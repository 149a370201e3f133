"""Request limits enforced before any work: body size (413), body read time (408) and
concurrent requests (429).

`BodySizeLimit` is a pure ASGI middleware (so streaming responses keep their disconnect
detection); it also gives a client `read_timeout_s` seconds to send the whole body, so a slow
sender cannot hold a request slot (the header deadline is uvicorn's side: api/server.py); `Admission` hands out at most `limit` slots and refuses the next request at once,
as TGI does, instead of queueing it.
"""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fewshot.api.errors import (
    BodyReadError,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    render,
    wire_for_path,
)


class BodyTooLarge(HTTPException):
    """Raised from `receive` past the limit; FastAPI re-raises HTTPExceptions from body reads,
    so the app's handler renders it in the route's format."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body is larger than {limit} bytes")
        self.limit = limit


class BodySizeLimit:
    """Answer 413 (in the route's error format) to bodies over `max_bytes`, and 408 when the
    body is not complete `read_timeout_s` seconds after the app started reading it."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = render(PayloadTooLarge(self.max_bytes), wire_for_path(scope["path"]))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        received = 0
        started = False
        body_done = False
        deadline: float | None = None

        async def timed_receive() -> Message:
            nonlocal deadline
            if body_done or self.read_timeout_s is None:
                return await receive()
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + self.read_timeout_s
            try:
                return await asyncio.wait_for(receive(), max(0.0, deadline - now))
            except TimeoutError:
                raise BodyReadError(RequestTimeout(self.read_timeout_s)) from None

        async def limited_receive() -> Message:
            nonlocal received, body_done
            message = await timed_receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await too_large(scope, receive, send)


class Slot:
    """One admitted request; `release()` may be called any number of times."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.active -= 1


class Admission:
    """At most `limit` requests in flight; beyond it `acquire()` raises Overloaded at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> Slot:
        if self.active >= self.limit:
            raise Overloaded()
        self.active += 1
        return Slot(self)
