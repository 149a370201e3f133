"""The two Ray Serve deployments of `fewshot serve --replicas N`.

`Engine` (N replicas): one API app each (`create_app(settings)`, the same app uvicorn serves),
its models loaded before Ray sends it traffic. `handle` replays a forwarded request through
the app and streams the ASGI messages back, every response tagged `x-fewshot-replica`.

`Gateway` (the HTTP ingress behind Ray's proxy): reads each request, finds its prompt's
prefix keys and calls `Engine.handle` through a handle whose router is `PrefixAffinityRouter`.
Why not `serve.ingress(app)` on the engine: Ray's proxy routes a request before its body is
read (the replica pulls it afterwards), so no router could see the prompt; Ray Serve LLM has
the same split (an OpenAI ingress calling `LLMServer` replicas).

Faults: a request whose replica dies before answering is sent once more (Ray drops the dead
replica from routing, so the retry goes elsewhere, and restarts it); a stream cut by a dead replica
ends with an error event in its route's format. /health answers within `health_timeout_s`
whatever the replicas do. /info adds the replicas; /metrics merges every replica's metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError, RayError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from fewshot.api.app import create_app
from fewshot.api.errors import (
    ApiError,
    GenerationFailed,
    ModelUnavailable,
    PayloadTooLarge,
    error_body,
    render,
    wire_for_path,
)
from fewshot.api.metrics import CONTENT_TYPE
from fewshot.api.sse import event
from fewshot.serving.forward import RoutedRequest, call_app
from fewshot.serving.registry import decisions_exposition, replica_ids
from fewshot.serving.replica_metrics import merge_expositions
from fewshot.settings import Settings

log = logging.getLogger("fewshot.serving")

REPLICA_HEADER = "x-fewshot-replica"
# tries of a request whose replica died before it answered: one retry, so a request that
# itself kills replicas (a "query of death") takes down at most two
_ATTEMPTS = 2
_RETRY_DELAY_S = 0.1


class Engine:
    """One replica of the API: the app, its models, and the replay of forwarded requests."""

    async def __init__(self, settings: Settings) -> None:
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.app = create_app(settings)
        self._header = [(REPLICA_HEADER.encode(), self.replica.encode())]
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        state = self.app.state.fewshot
        for model in state.models:  # take no traffic before the models are ready
            await model.wait(settings.model_wait_timeout_s)
        failed = [f"{m.name}: {m.error or 'still loading'}" for m in state.models if not m.llm]
        if failed:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.__aexit__(None, None, None)
            raise RuntimeError("models did not load: " + "; ".join(failed))
        log.info("replica %s ready (pid %d)", self.replica, os.getpid())

    async def handle(self, request: RoutedRequest) -> AsyncIterator[dict[str, Any]]:
        """The app's response to `request`, as ASGI messages (streamed)."""
        async for message in call_app(self.app, request, self._header):
            yield message

    def describe(self, request: RoutedRequest | None = None) -> dict[str, Any]:
        """This replica for /info: id, process, node, models and their status. (`request`
        only carries the routing target.)"""
        state = self.app.state.fewshot
        return {
            "id": self.replica,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "models": [{"name": m.name, "status": m.status} for m in state.models],
        }

    async def __del__(self) -> None:
        # Ray calls this after draining the replica's requests (graceful_shutdown_timeout_s)
        lifespan = getattr(self, "_lifespan", None)  # None: __init__ did not get that far
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)


async def _start(engine: Any, request: RoutedRequest) -> tuple[dict[str, Any], Any]:
    """Send `request`; return its response start message and the rest of the stream. A replica
    that dies first costs one attempt."""
    error: Exception | None = None
    for attempt in range(_ATTEMPTS):
        if attempt:  # let Ray's router take the dead replica out (it learns on its own loop)
            await asyncio.sleep(_RETRY_DELAY_S)
        stream = engine.options(stream=True).handle.remote(request)
        try:
            return await stream.__anext__(), stream
        except RayActorError as exc:
            log.warning("replica died before answering %s %s", request.method, request.path)
            error = exc
    raise ModelUnavailable(f"No replica could answer: {type(error).__name__}")


async def _collect(engine: Any, request: RoutedRequest) -> tuple[int, dict[str, str], bytes]:
    """A whole response: status, headers, body."""
    start, stream = await _start(engine, request)
    chunks = [m.get("body", b"") async for m in stream if m["type"] == "http.response.body"]
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], headers, b"".join(chunks)


class Gateway:
    """The HTTP ingress: forwards each request to an `Engine` replica chosen by its prefix."""

    def __init__(self, engine: Any, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.app_name = serve.get_replica_context().app_name

    async def __call__(self, http: Request) -> Response:
        wire = wire_for_path(http.url.path)
        body = bytearray()
        async for chunk in http.stream():
            body += chunk
            if len(body) > self.settings.max_body_bytes:
                return render(PayloadTooLarge(self.settings.max_body_bytes), wire)
        s = self.settings
        request = RoutedRequest.from_scope(
            http.scope, bytes(body), s.affinity_block_chars, s.affinity_max_blocks
        )
        try:
            if request.method == "GET" and request.path in ("/health", "/info", "/metrics"):
                return await getattr(self, "_" + request.path[1:])(request)
            return await self._forward(request, wire)
        except ModelUnavailable as exc:
            return render(exc, wire)
        except RayError:  # a bug in a replica: a 500 in the route's format, never a hang
            log.exception("replica failed on %s %s", request.method, request.path)
            return render(ApiError("Internal error in a replica", status=500), wire)

    async def _forward(self, request: RoutedRequest, wire: str) -> Response:
        start, stream = await _start(self.engine, request)
        headers = list(start["headers"])
        sse = any(
            k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers
        )
        response = StreamingResponse(_body(stream, request, wire, sse), start["status"])
        response.raw_headers = headers
        return response

    async def _health(self, request: RoutedRequest) -> Response:
        try:
            status, headers, body = await asyncio.wait_for(
                _collect(self.engine, request), self.settings.ray_health_timeout_s
            )
        except (TimeoutError, ModelUnavailable) as exc:
            detail = "no replica answered in time" if isinstance(exc, TimeoutError) else str(exc)
            body_ = {"error": "unhealthy", "error_type": "healthcheck", "detail": detail}
            return JSONResponse(body_, status_code=503)
        return Response(body, status, headers=_keep(headers))

    async def _fan_out(self, request: RoutedRequest, method: str) -> dict[str, Any]:
        """`method` ("describe" or "collect") on every replica the router sees, one after the
        other (calls made while serving one request share Ray's internal request id, which
        its routing queue matches on), each within health_timeout_s. With a router that
        publishes no replicas (`--router default`), on the one replica it picks."""
        ids: list[str | None] = list(replica_ids(self.app_name))
        if not ids:  # the router starts with the first request it routes
            await self.engine.describe.remote(RoutedRequest())
            ids = list(replica_ids(self.app_name)) or [None]
        results: dict[str, Any] = {}
        for rid in ids:
            target = dataclasses.replace(request, replica=rid)
            call = (
                self.engine.describe.remote(target)
                if method == "describe"
                else _collect(self.engine, target)
            )
            try:
                result = await asyncio.wait_for(call, self.settings.ray_health_timeout_s)
            except (TimeoutError, RayActorError, ModelUnavailable) as exc:
                result = exc
            if rid is None and not isinstance(result, BaseException):
                rid = result["id"] if method == "describe" else result[1].get(REPLICA_HEADER)
            results[rid or "?"] = result
        return results

    async def _info(self, request: RoutedRequest) -> Response:
        status, headers, body = await _collect(self.engine, request)
        info = json.loads(body)
        replicas = await self._fan_out(request, "describe")
        info["replicas"] = [
            r if not isinstance(r, BaseException) else {"id": rid, "error": type(r).__name__}
            for rid, r in replicas.items()
        ]
        return JSONResponse(info, status, headers=_keep(headers))

    async def _metrics(self, request: RoutedRequest) -> Response:
        answers = await self._fan_out(request, "collect")
        texts = {
            rid: a[2].decode() for rid, a in answers.items() if not isinstance(a, BaseException)
        }
        if not texts:
            raise ModelUnavailable("No replica answered")
        headers = {REPLICA_HEADER: ",".join(sorted(texts))}
        text = merge_expositions(texts) + decisions_exposition(self.app_name)
        return Response(text, media_type=CONTENT_TYPE, headers=headers)


def _keep(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in ("content-length",)}


async def _body(stream: Any, request: RoutedRequest, wire: Any, sse: bool) -> AsyncIterator[bytes]:
    """The response body from the replica; a replica dying (or failing) mid-stream ends an
    event stream with an error event in the route's format."""
    try:
        async for message in stream:
            if message["type"] == "http.response.body" and message.get("body"):
                yield message["body"]
    except RayError as exc:
        died = isinstance(exc, RayActorError)
        log.warning(
            "replica %s while answering %s %s",
            "died" if died else "failed",
            request.method,
            request.path,
        )
        if sse:
            failure = GenerationFailed(
                f"The replica serving this request died ({type(exc).__name__})"
                if died
                else "Internal error in a replica"
            )
            yield event(error_body(failure, wire)).encode()
    finally:
        stream.cancel()
