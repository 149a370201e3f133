"""API errors and how each wire format renders them.

Routes raise `ApiError` subclasses (or let FastAPI raise `RequestValidationError`); the handlers
that `install_error_handlers` registers render them in the format of the route that failed,
chosen from the request path:

- Hugging Face Inference API (`/models/...`): `{"error": str}`; validation errors are a *list*
  of messages with status 400, as api-inference-community does; 503 while loading carries
  `estimated_time`.
- TGI (everything else): `{"error": str, "error_type": str}` with TGI's status codes
  (422 validation, 424 generation, 429 overloaded).
- OpenAI (`/v1/...`): `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

Wire = Literal["hf", "tgi", "openai"]

log = logging.getLogger("fewshot.api")

# transformers' message for unknown generation kwargs; huggingface_hub matches it on a 400 and
# retries without those parameters.
UNUSED_KWARGS = "The following `model_kwargs` are not used by the model: [{names}]"


def wire_for_path(path: str) -> Wire:
    """Which error format a route speaks, from its path."""
    if path.startswith("/v1/") or path == "/v1":
        return "openai"
    if path.startswith("/models/"):
        return "hf"
    return "tgi"


@dataclass
class Issue:
    """One problem with a request: where (dotted path, e.g. `parameters.top_k`) and what."""

    path: str
    message: str
    kind: str = "value"  # "value" | "missing" | "extra" | "json"

    @property
    def leaf(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rsplit(".", 1)[0] if "." in self.path else "body"


class ApiError(Exception):
    """An error answered to the client. Subclasses fix the status and the error type."""

    status: int = 500
    error_type: str = "internal"
    openai_type: str = "server_error"
    openai_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if status is not None:
            self.status = status

    def status_for(self, wire: Wire) -> int:
        return self.status

    def hf_body(self) -> dict[str, Any]:
        return {"error": self.message}

    def tgi_body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": self.error_type}


class ValidationFailed(ApiError):
    """Bad input: 400 (HF, OpenAI, malformed JSON everywhere) or 422 (TGI)."""

    error_type = "validation"
    openai_type = "invalid_request_error"

    def __init__(self, issues: list[Issue], *, status: int | None = None) -> None:
        self.issues = issues or [Issue("body", "invalid request")]
        first = self.issues[0]
        super().__init__(first.message, param=first.path)
        self.explicit_status = status
        self.openai_code = "context_length_exceeded" if first.kind == "length" else None

    @classmethod
    def one(cls, path: str, message: str, kind: str = "value") -> ValidationFailed:
        return cls([Issue(path, message, kind)])

    def status_for(self, wire: Wire) -> int:
        if self.explicit_status is not None:
            return self.explicit_status
        return 422 if wire == "tgi" else 400

    def hf_body(self) -> dict[str, Any]:
        return {"error": [_hf_message(i) for i in self.issues]}

    def tgi_body(self) -> dict[str, Any]:
        text = "; ".join(_tgi_message(i) for i in self.issues)
        return {"error": f"Input validation error: {text}", "error_type": self.error_type}

    def openai_message(self) -> str:
        return "; ".join(_openai_message(i) for i in self.issues)


class Unauthorized(ApiError):
    status = 401
    error_type = "unauthorized"
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"

    def __init__(self, message: str = "Invalid credentials in Authorization header") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFound(ApiError):
    status = 404
    error_type = "not_found"
    openai_type = "invalid_request_error"
    openai_code = "model_not_found"

    def __init__(self, name: str, served: list[str]) -> None:
        listing = ", ".join(served) or "none"
        super().__init__(
            f"Model {name} does not exist here; served models: {listing}", param="model"
        )


class ModelLoading(ApiError):
    status = 503
    error_type = "loading"
    openai_code = "model_loading"

    def __init__(self, name: str, estimated_time: float) -> None:
        super().__init__(f"Model {name} is currently loading")
        self.estimated_time = round(estimated_time, 2)
        self.headers = {"Retry-After": str(max(1, int(estimated_time + 0.999)))}

    def hf_body(self) -> dict[str, Any]:
        return {"error": self.message, "estimated_time": self.estimated_time}

    def tgi_body(self) -> dict[str, Any]:
        return {**super().tgi_body(), "estimated_time": self.estimated_time}


class ModelUnavailable(ApiError):
    """The model failed to load (or the server is shutting down)."""

    status = 503
    error_type = "unhealthy"
    openai_code = "model_unavailable"


class ShuttingDown(ApiError):
    """SIGTERM received: in-flight requests finish, new ones are refused."""

    status = 503
    error_type = "shutting_down"
    openai_code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("The server is shutting down", headers={"Retry-After": "1"})


class Overloaded(ApiError):
    status = 429
    error_type = "overloaded"
    openai_type = "server_overloaded"
    openai_code = "overloaded"

    def __init__(self) -> None:
        super().__init__("Model is overloaded")


class PayloadTooLarge(ApiError):
    status = 413
    error_type = "validation"
    openai_type = "invalid_request_error"
    openai_code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than {limit} bytes", param="body")


class RequestTimeout(ApiError):
    """The client sent its body too slowly (`body_read_timeout_s`)."""

    status = 408
    error_type = "timeout"
    openai_type = "invalid_request_error"
    openai_code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request body was not received within {seconds:g} s", param="body")


class BodyReadError(StarletteHTTPException):
    """An ApiError raised from an ASGI `receive` (the body checks of middlewares). FastAPI
    re-raises HTTPExceptions from body reads, so the app's handler renders `error` in the
    route's format and counts it."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.status, error.message)
        self.error = error


class GenerationFailed(ApiError):
    """The engine failed while generating: 424 in TGI, 500 elsewhere."""

    error_type = "generation"

    def status_for(self, wire: Wire) -> int:
        return 424 if wire == "tgi" else 500


def _hf_message(issue: Issue) -> str:
    if issue.kind == "extra":  # transformers' own wording, which huggingface_hub parses
        return issue.message
    return f"{issue.message}: received `{issue.leaf}` in `{issue.parent}`"


def _tgi_message(issue: Issue) -> str:
    return f"`{issue.path}`: {issue.message}"


def _openai_message(issue: Issue) -> str:
    if issue.kind == "missing":
        return f"Missing required parameter: '{issue.path}'."
    if issue.kind == "extra":
        return f"Unrecognized request argument supplied: {issue.path}"
    if issue.kind in ("json", "length"):
        return issue.message
    return f"Invalid value for '{issue.path}': {issue.message}"


def error_body(err: ApiError, wire: Wire) -> dict[str, Any]:
    """The JSON body of `err` in `wire`'s format."""
    if wire == "hf":
        return err.hf_body()
    if wire == "tgi":
        return err.tgi_body()
    message = err.openai_message() if isinstance(err, ValidationFailed) else err.message
    return {
        "error": {
            "message": message,
            "type": err.openai_type,
            "param": err.param,
            "code": err.openai_code,
        }
    }


def render(err: ApiError, wire: Wire) -> JSONResponse:
    return JSONResponse(
        error_body(err, wire), status_code=err.status_for(wire), headers=err.headers
    )


# --- FastAPI/pydantic validation errors -> Issues ---------------------------------------------

_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "tuple"}


def _is_union_tag(part: Any) -> bool:
    if not isinstance(part, str):
        return False
    return part in _TYPE_TAGS or "[" in part or part.startswith("function-")


def _path(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if not _is_union_tag(p)]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def issues_from_validation(exc: RequestValidationError) -> list[Issue]:
    """Turn pydantic's error list into Issues: one per field, union branches merged."""
    issues: dict[str, Issue] = {}
    extras: dict[str, list[str]] = {}
    for e in exc.errors():
        kind = e.get("type", "")
        loc = tuple(e.get("loc", ()))
        if kind == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "invalid JSON")
            return [Issue("body", f"Malformed JSON body: {detail}", "json")]
        path = _path(loc)
        if kind == "extra_forbidden":
            parent, _, leaf = path.rpartition(".")
            extras.setdefault(parent, []).append(leaf)
            continue
        if path in issues:
            continue
        if kind == "missing":
            issues[path] = Issue(path, "Field required", "missing")
        else:
            issues[path] = Issue(path, str(e.get("msg", "invalid value")))
    for parent, names in extras.items():
        quoted = ", ".join(f"'{n}'" for n in names)
        path = f"{parent}.{names[0]}" if parent else names[0]
        message = (
            UNUSED_KWARGS.format(names=quoted)
            if parent == "parameters"
            else (f"Unknown field(s): {quoted}")
        )
        issues[path] = Issue(path, message, "extra")
    return list(issues.values())


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def install_error_handlers(app: FastAPI) -> None:
    """Render every error in the failing route's format; count it in the app's metrics."""

    def respond(request: Request, err: ApiError) -> JSONResponse:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.count_error(_route_label(request), err.error_type)
        return render(err, wire_for_path(request.url.path))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = issues_from_validation(exc)
        status = 400 if issues and issues[0].kind == "json" else None
        return respond(request, ValidationFailed(issues, status=status))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, BodyReadError):
            return respond(request, exc.error)
        if exc.status_code == 413:
            return respond(request, PayloadTooLarge(getattr(exc, "limit", 0)))
        err = ApiError(str(exc.detail), status=exc.status_code, headers=dict(exc.headers or {}))
        err.error_type = "not_found" if exc.status_code == 404 else "http"
        err.openai_type = "invalid_request_error"
        return respond(request, err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return respond(request, ApiError("Internal server error"))
