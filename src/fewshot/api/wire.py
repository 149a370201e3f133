"""Rules every request body follows, whatever its route, applied in one place each, and the
bases of the wire models (`RequestModel`, `ResponseModel`).

- Text is valid Unicode: JSON may spell a lone UTF-16 surrogate (`"\\ud800"`), which Python
  keeps as an unencodable `str`; the tokenizer and the UTF-8 encoder then fail. `JsonBodies`
  (api/json_body.py) rejects such a body before any route sees it, with a 4xx naming the field
  (`find_lone_surrogate`). Surrogate *pairs* are ordinary characters and pass. Bodies that are
  not UTF-8 are malformed JSON (400).
- Numbers are finite: Python's JSON parser reads `NaN`, `Infinity` and `1e999`; every request
  model derives from `RequestModel`, whose `allow_inf_nan=False` makes them a 4xx.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

SURROGATE_MESSAGE = (
    "contains a lone UTF-16 surrogate; text must be valid Unicode (send surrogate pairs, "
    "or the character itself)"
)


class RequestModel(BaseModel):
    """Base of every request body model: non-finite numbers are a validation error."""

    model_config = ConfigDict(allow_inf_nan=False)


class ResponseModel(BaseModel):
    """Base of the response models that routes build their answers with (the same models
    document them in OpenAPI). `body()` leaves out the fields a route did not set, so an
    optional part (TGI `top_tokens`, an OpenAI chunk's `usage`) appears only when asked for.
    """

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def _is_valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_lone_surrogate(value: Any) -> str | None:
    """The dotted path (`parameters.stop.0`, `body` for the top level) of the first string --
    value or object key -- holding a lone surrogate, else None. Iterative: any nesting depth."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _is_valid_text(item):
                return ".".join(str(p) for p in path) or "body"
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if not _is_valid_text(key):
                    return ".".join(str(p) for p in (*path, "<key>")) or "body"
                stack.append(((*path, key), child))
        elif isinstance(item, list):
            stack.extend(((*path, i), child) for i, child in reversed(list(enumerate(item))))
    return None
