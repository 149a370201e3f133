"""One HTTP request carried from the gateway to an engine replica, and its in-process replay.

The gateway reads the request (method, path, headers, body) into a picklable `RoutedRequest`,
with the prompt's prefix keys for the router. The engine replica replays it against its own
API app (`call_app`: a plain ASGI call, so every route, middleware and error handler runs as
under uvicorn) and streams the ASGI response messages back as they are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fewshot.serving.affinity import prefix_keys, text_key


@dataclass
class RoutedRequest:
    """An HTTP request as the engine replay needs it, plus routing hints for the router."""

    method: str = "GET"
    path: str = "/"
    query_string: bytes = b""
    # never in a repr (a log line or an error message): headers carry the API key
    headers: list[tuple[bytes, bytes]] = field(default_factory=list, repr=False)
    body: bytes = field(default=b"", repr=False)
    client: tuple[str, int] | None = None
    prefix_keys: list[int] = field(default_factory=list)  # chained prompt block keys
    text_key: int | None = None  # key of a prompt shorter than one block
    replica: str | None = None  # send to this replica only (fan-out of /info, /metrics)

    @classmethod
    def from_scope(
        cls, scope: dict[str, Any], body: bytes, block_chars: int, max_blocks: int
    ) -> RoutedRequest:
        req = cls(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            headers=[(bytes(k), bytes(v)) for k, v in scope.get("headers", [])],
            body=body,
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        text = prompt_text(req.path, body)
        if text:
            req.prefix_keys = prefix_keys(text, block_chars, max_blocks)
            req.text_key = None if req.prefix_keys else text_key(text)
        return req

    def scope(self) -> dict[str, Any]:
        """The ASGI HTTP scope of the replayed request."""
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": self.query_string,
            "headers": list(self.headers),
            "client": self.client,
            "server": None,
            "state": {},
        }


def _text(value: Any) -> str:
    """A prompt field as text: a string, the first of a list, token ids as their digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, int):
            return " ".join(str(t) for t in value)
        return _text(first)
    return ""


def _chat_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    parts = []
    for m in messages:
        if isinstance(m, dict):
            content = m.get("content")
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{m.get('role', '')}\n{content if isinstance(content, str) else ''}\n")
    return "".join(parts)


def prompt_text(path: str, body: bytes) -> str:
    """The text whose prefix decides the replica: the prompt of a generation request
    (`inputs`, `prompt`, chat `messages`); for a task prediction, the task name first (the
    task's examples are the shared prefix). Empty when the request carries none."""
    if not body or body[:1] not in (b"{", b"["):
        return ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""  # the replica answers the malformed body in the route's format
    if not isinstance(data, dict):
        return ""
    if path.startswith("/tasks/"):
        return f"{path}\n{_text(data.get('inputs') or data.get('text'))}"
    if "messages" in data:
        return _chat_text(data["messages"])
    return _text(data.get("inputs", data.get("prompt")))


async def call_app(
    app: Any, request: RoutedRequest, extra_headers: list[tuple[bytes, bytes]]
) -> AsyncIterator[dict[str, Any]]:
    """Run `request` through the ASGI `app`; yield its response messages as they are sent, the
    start message with `extra_headers` added. Closing the iterator early (the client went away)
    tells the app the client disconnected, then cancels it."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if disconnected.is_set():
            raise OSError("client disconnected")
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
        await queue.put(message)

    async def run() -> None:
        try:
            await app(request.scope(), receive, send)
        finally:
            await queue.put(None)

    task = asyncio.create_task(run())
    complete = False
    try:
        while not complete and (message := await queue.get()) is not None:
            complete = message["type"] == "http.response.body" and not message.get("more_body")
            yield message
        if not complete:
            await task  # re-raises what the app raised
            raise RuntimeError("the app ended without a complete response")
    finally:
        disconnected.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
