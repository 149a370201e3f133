"""Request building and response parsing of the HF Inference API clients (sync and async).

Each public method of `Calls` returns a `Call`: the HTTP method, path, JSON body and the parser
of the answer. `Client` and `AsyncClient` (client.py) only send calls, so the two share one
implementation of everything but the transport.
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
class Call(Generic[T]):
    """One HTTP request and how to read its JSON answer."""

    method: str
    path: str
    body: Any
    parse: Callable[[Any], T]


class Calls:
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
    ) -> Call[Any]:
        body = {
            "inputs": payload,
            "parameters": dict(parameters or {}),
            "options": dict(DEFAULT_OPTIONS if options is None else options),
        }
        return Call("POST", self._model_path(model), body, lambda data: data)

    def query(
        self,
        payload: str | list[str],
        parameters: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
        model: str | None,
    ) -> Call[str]:
        call = self.query_raw(payload, parameters, options, model)
        return Call(call.method, call.path, call.body, _first_generated_text)

    def generate(
        self,
        prompt: FewShotPrompt | str,
        query: str | None,
        parameters: Mapping[str, Any],
        options: Mapping[str, Any] | None,
        model: str | None,
    ) -> Call[str]:
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
        return Call(call.method, call.path, call.body, parse)

    def tgi_generate(
        self, inputs: str, parameters: Mapping[str, Any], model: str | None
    ) -> Call[dict]:
        body: dict[str, Any] = {"inputs": inputs, "parameters": dict(parameters)}
        if model or self.model:
            body["model"] = model or self.model
        return Call("POST", "/generate", body, _expect(dict))

    def choose(self, inputs: str, choices: list[str], model: str | None) -> Call[dict]:
        """TGI's /generate with the `choices` extension: {"choice", "logprobs": {choice: lp}}."""
        call = self.tgi_generate(inputs, {"choices": list(choices)}, model)

        def parse(data: Any) -> dict:
            out = _expect(dict)(data)
            scored = (out.get("details") or {}).get("choices") or []
            return {
                "choice": out["generated_text"],
                "logprobs": {c["text"]: float(c["logprob"]) for c in scored},
            }

        return Call(call.method, call.path, call.body, parse)

    def create_task(
        self, name: str, examples: Iterable[Any], options: Mapping[str, Any]
    ) -> Call[dict]:
        rows = [_example_row(e) for e in examples]
        return Call("POST", "/tasks", {"name": name, "examples": rows, **options}, _expect(dict))

    def predict_task(self, name: str, inputs: str | list[str]) -> Call[list[dict]]:
        return Call(
            "POST", f"/tasks/{name}/predict", {"inputs": inputs}, lambda d: d["predictions"]
        )

    def list_tasks(self) -> Call[list[dict]]:
        return Call("GET", "/tasks", None, lambda d: d["tasks"])

    def delete_task(self, name: str) -> Call[dict]:
        return Call("DELETE", f"/tasks/{name}", None, _expect(dict))


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


def parse_response(call: Call[T], response: httpx.Response) -> T:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        fallback = response.reason_phrase or f"HTTP {response.status_code}"
        raise FewShotAPIError(response.status_code, error_message(body, fallback), body)
    return call.parse(body)
