"""HTTP clients for the Hugging Face Inference API format (ours or any server that speaks it).

`Client.query(payload, parameters, options)` mirrors the seed blog's `query()`: it POSTs
``{"inputs", "parameters", "options"}`` to ``{url}/models/{model}`` (or to a full model URL) and
returns the first ``generated_text``; a non-2xx answer raises `FewShotAPIError` carrying the
server's status and message. `generate()` takes a `FewShotPrompt` (rendered, stopped at its
separator, answer parsed) or a plain string. The same client reaches the server's few-shot task
classifiers (`/tasks`) and TGI's `/generate` with prompt log-probabilities.

`Client` (sync) and `AsyncClient` (async) share everything but the transport: each public method
builds a `_Call` (method, path, body, parser) in `_Calls`, and the two classes only send it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from fewshot.toolkit.prompts import FewShotPrompt

T = TypeVar("T")
DEFAULT_OPTIONS: dict[str, Any] = {"use_cache": False}


class FewShotAPIError(RuntimeError):
    """The server answered with an error (status >= 400) or could not be reached (status None)."""

    def __init__(self, status: int | None, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.body = body


def error_message(body: Any, fallback: str) -> str:
    """The human message in an error body: {"error": str | [str]}, {"detail": ...} or text."""
    if isinstance(body, Mapping):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, list):
            return " ".join(e if isinstance(e, str) else str(e.get("msg", e)) for e in err)
        if isinstance(err, Mapping):
            return str(err.get("message", err))
        if err is not None:
            return str(err)
    if isinstance(body, str) and body.strip():
        return body.strip()
    return fallback


def split_model_url(url: str, model: str | None = None) -> tuple[str, str | None]:
    """(base URL, model id) from a server URL or a full model URL (``.../models/<id>``)."""
    url = url.rstrip("/")
    marker = "/models/"
    if marker in url:
        base, _, found = url.partition(marker)
        return base, model or found
    return url, model


def _cut(text: str, stops: Iterable[str]) -> str:
    for s in stops:
        if s and s in text:
            text = text.split(s, 1)[0]
    return text


@dataclass
class _Call(Generic[T]):
    """One HTTP request and how to read its JSON answer."""

    method: str
    path: str
    body: Any
    parse: Callable[[Any], T]


class _Calls:
    """Request building and response parsing shared by the sync and async clients."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        model: str | None = None,
        stop_parameter: str = "stop",
    ) -> None:
        self.base_url, self.model = split_model_url(url, model)
        self.token = token
        if stop_parameter not in {"stop", "end_sequence"}:
            raise ValueError("stop_parameter must be 'stop' or 'end_sequence'")
        self.stop_parameter = stop_parameter

    @property
    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def _model_path(self, model: str | None) -> str:
        m = model or self.model
        if not m:
            raise ValueError("no model: give Client(url, model=...) or a full model URL")
        return f"/models/{m}"

    def query_raw(
        self,
        payload: str | list[str],
        parameters: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
        model: str | None,
    ) -> _Call[Any]:
        body = {
            "inputs": payload,
            "parameters": dict(parameters or {}),
            "options": dict(DEFAULT_OPTIONS if options is None else options),
        }
        return _Call("POST", self._model_path(model), body, lambda data: data)

    def query(
        self,
        payload: str | list[str],
        parameters: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
        model: str | None,
    ) -> _Call[str]:
        call = self.query_raw(payload, parameters, options, model)
        return _Call(call.method, call.path, call.body, _first_generated_text)

    def generate(
        self,
        prompt: FewShotPrompt | str,
        query: str | None,
        parameters: Mapping[str, Any],
        options: Mapping[str, Any] | None,
        model: str | None,
    ) -> _Call[str]:
        params: dict[str, Any] = {}
        if isinstance(prompt, FewShotPrompt):
            params.update(prompt.parameters)
            params.setdefault("stop", prompt.stop)
            text = prompt.render(query)
        else:
            text = prompt if query is None else prompt + query
        params.update(parameters)
        params["return_full_text"] = False
        stop_value, end_sequence = params.pop("stop", None), params.pop("end_sequence", None)
        stops = stop_value or end_sequence or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        if stops:
            params[self.stop_parameter] = stops if self.stop_parameter == "stop" else stops[0]
        if params.get("temperature") == 0:  # greedy: the HF API rejects temperature 0
            params.pop("temperature")
            params["do_sample"] = False

        def parse(data: Any) -> str:
            out = _first_generated_text(data)
            if out.startswith(text):  # a server that ignored return_full_text
                out = out[len(text) :]
            out = _cut(out, stops)
            return (
                prompt.parse_answer(out, first_line=False)
                if isinstance(prompt, FewShotPrompt)
                else out
            )

        call = self.query_raw(text, params, options, model)
        return _Call(call.method, call.path, call.body, parse)

    def tgi_generate(
        self, inputs: str, parameters: Mapping[str, Any], model: str | None
    ) -> _Call[dict]:
        body: dict[str, Any] = {"inputs": inputs, "parameters": dict(parameters)}
        if model or self.model:
            body["model"] = model or self.model
        return _Call("POST", "/generate", body, _expect(dict))

    def choose(self, inputs: str, choices: list[str], model: str | None) -> _Call[dict]:
        """TGI's /generate with the `choices` extension: {"choice", "logprobs": {choice: lp}}."""
        call = self.tgi_generate(inputs, {"choices": list(choices)}, model)

        def parse(data: Any) -> dict:
            out = _expect(dict)(data)
            scored = (out.get("details") or {}).get("choices") or []
            return {
                "choice": out["generated_text"],
                "logprobs": {c["text"]: float(c["logprob"]) for c in scored},
            }

        return _Call(call.method, call.path, call.body, parse)

    def create_task(
        self, name: str, examples: Iterable[Any], options: Mapping[str, Any]
    ) -> _Call[dict]:
        rows = [_example_row(e) for e in examples]
        return _Call("POST", "/tasks", {"name": name, "examples": rows, **options}, _expect(dict))

    def predict_task(self, name: str, inputs: str | list[str]) -> _Call[list[dict]]:
        return _Call(
            "POST", f"/tasks/{name}/predict", {"inputs": inputs}, lambda d: d["predictions"]
        )

    def list_tasks(self) -> _Call[list[dict]]:
        return _Call("GET", "/tasks", None, lambda d: d["tasks"])

    def delete_task(self, name: str) -> _Call[dict]:
        return _Call("DELETE", f"/tasks/{name}", None, _expect(dict))


def _example_row(e: Any) -> dict[str, str]:
    if isinstance(e, Mapping):
        return {"text": str(e["text"]), "label": str(e["label"])}
    text, label = e
    return {"text": str(text), "label": str(label)}


def _expect(kind: type) -> Callable[[Any], Any]:
    def parse(data: Any) -> Any:
        if not isinstance(data, kind):
            raise FewShotAPIError(200, f"unexpected response: {str(data)[:200]}", data)
        return data

    return parse


def _first_generated_text(data: Any) -> str:
    if isinstance(data, list) and data and isinstance(data[0], list):  # batched inputs
        data = data[0]
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        data = data[0]
    if isinstance(data, Mapping) and "generated_text" in data:
        return str(data["generated_text"])
    raise FewShotAPIError(200, f"no generated_text in response: {str(data)[:200]}", data)


def _result(call: _Call[T], response: httpx.Response) -> T:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        fallback = response.reason_phrase or f"HTTP {response.status_code}"
        raise FewShotAPIError(response.status_code, error_message(body, fallback), body)
    return call.parse(body)


class _ClientBase:
    """What the sync and async clients share: the request builder/parser and its settings."""

    _calls: _Calls

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
        self._calls = _Calls(url, token, model, stop_parameter)
        self._http = httpx.Client(
            base_url=self._calls.base_url,
            headers=self._calls.headers,
            timeout=timeout,
            transport=transport,
        )

    def _send(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as exc:
            raise FewShotAPIError(None, f"cannot reach {self._calls.base_url}: {exc}") from exc
        return _result(call, response)

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
        self._calls = _Calls(url, token, model, stop_parameter)
        self._http = httpx.AsyncClient(
            base_url=self._calls.base_url,
            headers=self._calls.headers,
            timeout=timeout,
            transport=transport,
        )

    async def _send(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as exc:
            raise FewShotAPIError(None, f"cannot reach {self._calls.base_url}: {exc}") from exc
        return _result(call, response)

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
