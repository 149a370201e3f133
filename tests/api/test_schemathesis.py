"""A bounded schemathesis run against the server's own /openapi.json: every operation, cases
generated from its schema (valid and invalid), with schemathesis' `not_a_server_error` check.
Token counts in generated bodies are capped at 4 so the run stays fast on the tiny model.
The schema is the document `/openapi.json` serves (`test_server_protection` checks they are
the same)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

CAPPED = ("max_new_tokens", "max_tokens", "max_completion_tokens")
MAX_EXAMPLES = 20  # per operation: ~17 operations -> a few hundred cases


def _document() -> dict[str, Any]:
    """The app's OpenAPI document (building the app loads no model); the test's server is the
    same app over the tiny model."""
    from fewshot.api.app import create_app
    from fewshot.settings import Settings

    return create_app(Settings(models=["tiny", "chat"])).openapi()


# the examples and fuzzing phases; the coverage phase (another ~1,900 boundary cases, which
# pass too, ~25 s more) is off to keep CI short
CONFIG = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


def _cap(body: Any) -> None:
    """Small generations: cap the token counts of a body (and of its `parameters`)."""
    if not isinstance(body, dict):
        return
    if "messages" in body and not any(k in body for k in CAPPED):
        body["max_tokens"] = 4  # a chat's default is the server's 512
    for target in (body, body.get("parameters")):
        if isinstance(target, dict):
            for key in CAPPED:
                value = target.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 4:
                    target[key] = 4
            examples = target.get("examples")
            if isinstance(examples, list):
                del examples[3:]  # /tasks: keep training small


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, api_server) -> None:
    _cap(case.body)
    case.call_and_validate(base_url=api_server.url, checks=[not_a_server_error], timeout=60)
