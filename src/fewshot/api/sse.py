"""Server-sent events: framing helpers and a streaming response that always runs its cleanup.

`EventStream` calls `on_close` however the stream ends -- finished, failed, or the client went
away (Starlette then cancels the body iterator; we also close it) -- so an abandoned stream
cancels its engine request and frees its admission slot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

KEEPALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"  # OpenAI's terminator; clients require the space
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: Any) -> str:
    """One `data:` event carrying `data` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response with a guaranteed `on_close` callback."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[str],
        on_close: Callable[[], None],
        headers: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        super().__init__(content, status_code, headers={**SSE_HEADERS, **(headers or {})})
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                with suppress(Exception):
                    await aclose()
            self._on_close()
