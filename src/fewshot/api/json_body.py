"""Read every POST body as JSON, whatever its Content-Type says, and hold it to the body rules.

The Hugging Face Inference API accepted `curl -d '{"inputs": ...}'` (sent as
application/x-www-form-urlencoded) and bodies with no Content-Type at all (the seed's
`requests.request(..., data=json.dumps(body))`); FastAPI would treat those as raw bytes. This
pure ASGI middleware relabels such requests as application/json, so they parse -- or fail with
a clear "malformed JSON" error -- like any other.

It also applies the rules of `api/wire.py` that no schema can express, once for every route:
the body must be UTF-8 (else 400 malformed JSON) and hold no lone UTF-16 surrogate escape (else
a validation error naming the field: 400, or 422 on TGI routes). The body is buffered for the
check (its size is already bounded by `BodySizeLimit`, outside this middleware); the failure is
raised from `receive`, so the app's handlers render it in the route's format and count it.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fewshot.api.errors import BodyReadError, Issue, ValidationFailed
from fewshot.api.wire import SURROGATE_MESSAGE, find_lone_surrogate

# a \uD800-\uDFFF escape: the only way a JSON text can carry a surrogate (paired or not)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def check_body(body: bytes) -> ValidationFailed | None:
    """The body-rule violation of a JSON body, or None (malformed JSON is left to the parser)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        issue = Issue("body", f"Malformed JSON body: not UTF-8 (byte {exc.start})", "json")
        return ValidationFailed([issue], status=400)
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    path = find_lone_surrogate(value)
    return None if path is None else ValidationFailed.one(path, SURROGATE_MESSAGE)


class JsonBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        current = dict(scope["headers"]).get(b"content-type", b"").lower()
        if current.startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        if not current.startswith(b"application/json") and not current.endswith(b"+json"):
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, _checked(receive), send)


def _checked(receive: Receive) -> Receive:
    """`receive` that delivers the whole body in one message, once it passed `check_body`."""
    done = False

    async def checked_receive() -> Message:
        nonlocal done
        if done:
            return await receive()
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # disconnected while sending the body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        done = True
        body = b"".join(chunks)
        error = check_body(body)
        if error is not None:
            raise BodyReadError(error)
        return {"type": "http.request", "body": body, "more_body": False}

    return checked_receive
