"""Ready-made few-shot prompts for the seed's kinds of tasks, shipped as YAML package data.

`list_presets()` gives JSON-able dicts (name, title, and the prompt fields) for the playground;
`load_preset(name)` gives a `FewShotPrompt`.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from fewshot.toolkit.prompts import FewShotPrompt, PromptError


@lru_cache(maxsize=1)
def _read_all() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
        if not entry.name.endswith((".yaml", ".yml")):
            continue
        data = yaml.safe_load(entry.read_text(encoding="utf-8"))
        title = data.pop("title", None)
        prompt = FewShotPrompt.from_dict(data)  # validates the file
        name = prompt.name or entry.name.rsplit(".", 1)[0]
        out[name] = {"name": name, "title": title or name, **prompt.to_dict()}
    return out


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return list(_read_all())


def list_presets() -> list[dict[str, Any]]:
    """Every preset as a JSON-able dict: name, title, description, format, separator,
    examples, query, parameters."""
    return [_copy(p) for p in _read_all().values()]


def get_preset(name: str) -> dict[str, Any]:
    """One preset as a JSON-able dict; PromptError if there is none of that name."""
    try:
        return _copy(_read_all()[name])
    except KeyError:
        raise PromptError(f"no preset named {name!r}; known: {', '.join(preset_names())}") from None


def load_preset(name: str) -> FewShotPrompt:
    """A preset as a FewShotPrompt."""
    data = get_preset(name)
    data.pop("title", None)
    return FewShotPrompt.from_dict(data)


def _copy(d: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(d)
