"""The OpenAPI document: every `$ref` resolves inside it.

FastAPI puts the models of request bodies and JSON responses under `components/schemas`; a
schema written by hand into `responses` (the `text/event-stream` events) would carry its own
`$defs` and `#/$defs/...` references, which dangle in the document. `event_stream(Model)`
instead refers to `#/components/schemas/Model`, and `install(app)` adds those models (and the
models they use) to the components when the document is built.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF = "#/components/schemas/{model}"

_event_models: list[type[BaseModel]] = []


def event_stream(model: type[BaseModel], description: str = "Server-sent events") -> dict:
    """A `responses` entry: `text/event-stream` whose `data:` events are `model`."""
    if model not in _event_models:
        _event_models.append(model)
    schema = {"$ref": REF.format(model=model.__name__)}
    return {"description": description, "content": {"text/event-stream": {"schema": schema}}}


def _add_components(doc: dict[str, Any], models: list[type[BaseModel]]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template=REF, mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault(model.__name__, schema)


def _plain_event_refs(doc: dict[str, Any]) -> None:
    """FastAPI merges the response class's `{"type": "string"}` into an event-stream schema;
    a `$ref` beside a contradicting type would not validate any event: keep the `$ref` only."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                media = response.get("content", {}).get("text/event-stream", {})
                schema = media.get("schema")
                if isinstance(schema, dict) and "$ref" in schema:
                    media["schema"] = {"$ref": schema["$ref"]}


def install(app: FastAPI) -> None:
    """Build the app's document once, with the event models in its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _add_components(doc, _event_models)
            _plain_event_refs(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
