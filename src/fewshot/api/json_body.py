"""Read every POST body as JSON, whatever its Content-Type says.

The Hugging Face Inference API accepted `curl -d '{"inputs": ...}'` (sent as
application/x-www-form-urlencoded) and bodies with no Content-Type at all (the seed's
`requests.request(..., data=json.dumps(body))`); FastAPI would treat those as raw bytes. This
pure ASGI middleware relabels such requests as application/json, so they parse -- or fail with
a clear "malformed JSON" error -- like any other.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

_KEEP = (b"application/json", b"multipart/form-data")


class JsonBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            current = dict(scope["headers"]).get(b"content-type", b"").lower()
            if not current.startswith(_KEEP) and not current.endswith(b"+json"):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
