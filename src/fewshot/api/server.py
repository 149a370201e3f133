"""The app under uvicorn, with the server-side protections configured from `Settings`.

- Slow clients: a connection must send each request's headers within `header_read_timeout_s`
  (uvicorn itself has no such deadline: a client that opens a socket and trickles headers
  would hold it forever), the body within `body_read_timeout_s` (408, `BodySizeLimit`), and
  idle keep-alive connections close after `keep_alive_timeout_s`. Beyond `max_connections`
  open connections uvicorn answers 503.
- Graceful shutdown: on SIGTERM (or `should_exit`) the app stops admitting requests (503
  "shutting down" in each route's format, and /health turns 503), uvicorn stops accepting
  connections and lets in-flight requests finish for up to `shutdown_timeout_s`, then the
  lifespan closes the engines. `run_server` returns normally, so `fewshot serve` exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from fewshot.settings import Settings


class _HeaderDeadline:
    """Mixin for uvicorn's HTTP protocol: close a connection whose next request's headers are
    not complete `header_timeout` seconds after it opened or after its previous response."""

    header_timeout: float = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[attr-defined]
        self._header_deadline = loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        handle = getattr(self, "_header_deadline", None)
        if handle is not None:
            handle.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        cycle = self.cycle  # type: ignore[attr-defined]
        waiting_for_headers = cycle is None or cycle.response_complete
        transport = self.transport  # type: ignore[attr-defined]
        if waiting_for_headers and not transport.is_closing():
            transport.close()


def protocol_class(header_timeout: float) -> type:
    """uvicorn's default HTTP protocol (httptools, else h11) with the header deadline."""
    return type(
        "FewshotHTTPProtocol",
        (_HeaderDeadline, AutoHTTPProtocol),
        {"header_timeout": header_timeout},
    )


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of `fewshot serve` (tests pass host/port/log_level overrides)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        # the access log prints the request line only, never headers (API keys stay private)
        "server_header": False,
        "http": protocol_class(settings.header_read_timeout_s),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "lifespan": "on",
    }
    return uvicorn.Config(app, **{**options, **overrides})


class Server(uvicorn.Server):
    """uvicorn's server that tells the app to stop admitting requests when shutdown starts."""

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        state = getattr(getattr(self.config.app, "state", None), "fewshot", None)
        if state is not None:
            state.begin_drain()
        await super().shutdown(sockets)


def _stopped(signum: int, frame: Any) -> None:
    """Installed before uvicorn runs: uvicorn re-raises the SIGTERM it handled (to its
    previous handler) after a graceful shutdown; this handler makes that a clean exit."""


def run_server(app: Any, settings: Settings) -> None:
    """Serve until SIGINT / SIGTERM; returns after a graceful shutdown."""
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        Server(uvicorn_config(app, settings)).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
