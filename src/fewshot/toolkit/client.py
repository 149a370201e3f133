"""HTTP clients for the Hugging Face Inference API format (ours or any server that speaks it).

`Client.query(payload, parameters, options)` mirrors the seed blog's `query()`: it POSTs
``{"inputs", "parameters", "options"}`` to ``{url}/models/{model}`` (or to a full model URL) and
returns the first ``generated_text``; a non-2xx answer raises `FewShotAPIError` carrying the
server's status and message. `generate()` takes a `FewShotPrompt` (rendered, stopped at its
separator, answer parsed) or a plain string. The same client reaches the server's few-shot task
classifiers (`/tasks`) and TGI's `/generate` with prompt log-probabilities.

`Client` (sync) and `AsyncClient` (async) share everything but the transport: each public method
builds a `Call` (method, path, body, parser) in `Calls` (client_calls.py), and the two
classes only send it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import httpx

from fewshot.toolkit.client_calls import (
    Call,
    Calls,
    FewShotAPIError,
    error_message,
    parse_response,
    split_model_url,
)
from fewshot.toolkit.prompts import FewShotPrompt

__all__ = ["AsyncClient", "Client", "FewShotAPIError", "error_message", "split_model_url"]

T = TypeVar("T")


class _ClientBase:
    """What the sync and async clients share: the request builder/parser and its settings."""

    _calls: Calls

    @property
    def model(self) -> str | None:
        return self._calls.model

    @property
    def base_url(self) -> str:
        return self._calls.base_url


class Client(_ClientBase):
    """Synchronous client. `Client(url, token=None, model=None)`; usable as a context manager."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        model: str | None = None,
        timeout: float = 120.0,
        stop_parameter: str = "stop",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._calls = Calls(url, token, model, stop_parameter)
        self._http = httpx.Client(
            base_url=self._calls.base_url,
            headers=self._calls.headers,
            timeout=timeout,
            transport=transport,
        )

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as exc:
            raise FewShotAPIError(None, f"cannot reach {self._calls.base_url}: {exc}") from exc
        return parse_response(call, response)

    def query(
        self,
        payload: str | list[str] = "",
        parameters: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> str:
        """POST the HF-format body; return the first generated_text (as in the seed's snippet)."""
        return self._send(self._calls.query(payload, parameters, options, model))

    def query_raw(
        self,
        payload: str | list[str],
        parameters: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> Any:
        """Same request as `query`, returning the whole JSON response."""
        return self._send(self._calls.query_raw(payload, parameters, options, model))

    def generate(
        self,
        prompt: FewShotPrompt | str,
        query: str | None = None,
        options: Mapping[str, Any] | None = None,
        model: str | None = None,
        **parameters: Any,
    ) -> str:
        """Generate after `prompt`. A FewShotPrompt is rendered (with `query`), stopped at its
        separator and its answer stripped; a string gets the raw continuation (cut at `stop`)."""
        return self._send(self._calls.generate(prompt, query, parameters, options, model))

    def tgi_generate(self, inputs: str, model: str | None = None, **parameters: Any) -> dict:
        """TGI's POST /generate (e.g. with decoder_input_details=True for prompt logprobs)."""
        return self._send(self._calls.tgi_generate(inputs, parameters, model))

    def choose(self, inputs: str, choices: list[str], model: str | None = None) -> dict:
        """The most likely of `choices` after `inputs` and every choice's log-probability."""
        return self._send(self._calls.choose(inputs, choices, model))

    def create_task(self, name: str, examples: Iterable[Any], **options: Any) -> dict:
        """Train (or replace, with overwrite=True) a named embedding classifier on the server."""
        return self._send(self._calls.create_task(name, examples, options))

    def predict_task(self, name: str, inputs: str | list[str]) -> list[dict]:
        """Labels and probabilities for each input from a named task."""
        return self._send(self._calls.predict_task(name, inputs))

    def list_tasks(self) -> list[dict]:
        return self._send(self._calls.list_tasks())

    def delete_task(self, name: str) -> dict:
        return self._send(self._calls.delete_task(name))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """Asynchronous client (httpx.AsyncClient) with the same methods as `Client`, awaited."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        model: str | None = None,
        timeout: float = 120.0,
        stop_parameter: str = "stop",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._calls = Calls(url, token, model, stop_parameter)
        self._http = httpx.AsyncClient(
            base_url=self._calls.base_url,
            headers=self._calls.headers,
            timeout=timeout,
            transport=transport,
        )

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as exc:
            raise FewShotAPIError(None, f"cannot reach {self._calls.base_url}: {exc}") from exc
        return parse_response(call, response)

    async def query(
        self,
        payload: str | list[str] = "",
        parameters: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> str:
        return await self._send(self._calls.query(payload, parameters, options, model))

    async def query_raw(
        self,
        payload: str | list[str],
        parameters: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> Any:
        return await self._send(self._calls.query_raw(payload, parameters, options, model))

    async def generate(
        self,
        prompt: FewShotPrompt | str,
        query: str | None = None,
        options: Mapping[str, Any] | None = None,
        model: str | None = None,
        **parameters: Any,
    ) -> str:
        return await self._send(self._calls.generate(prompt, query, parameters, options, model))

    async def tgi_generate(self, inputs: str, model: str | None = None, **parameters: Any) -> dict:
        return await self._send(self._calls.tgi_generate(inputs, parameters, model))

    async def choose(self, inputs: str, choices: list[str], model: str | None = None) -> dict:
        return await self._send(self._calls.choose(inputs, choices, model))

    async def create_task(self, name: str, examples: Iterable[Any], **options: Any) -> dict:
        return await self._send(self._calls.create_task(name, examples, options))

    async def predict_task(self, name: str, inputs: str | list[str]) -> list[dict]:
        return await self._send(self._calls.predict_task(name, inputs))

    async def list_tasks(self) -> list[dict]:
        return await self._send(self._calls.list_tasks())

    async def delete_task(self, name: str) -> dict:
        return await self._send(self._calls.delete_task(name))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
