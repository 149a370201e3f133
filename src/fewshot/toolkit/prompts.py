"""Few-shot prompts: a task description, examples and a query, rendered with one format.

A prompt renders as blocks joined by the separator on its own line::

    Translate English to French.
    ###
    English: sea otter
    French: loutre de mer
    ###
    English: cheese
    French:

The whitespace rule at the prompt/answer boundary (see toolkit/README.md):

* The format has exactly one ``{output}`` placeholder, at its end. The query block is the format
  up to ``{output}`` with trailing spaces and tabs removed, so the prompt never ends in a space
  (a trailing space would be tokenized on its own and the model, trained on " word" tokens, then
  predicts unusual tokens).
* The stripped whitespace belongs to the answer: `continuation(label)` returns it followed by the
  label, which is what rank classification scores after the query.
* A generated answer is cut at the separator, stripped, and (for single-line tasks) reduced to its
  first non-empty line by `parse_answer`; scoring then compares normalised strings
  (`fewshot.toolkit.scoring.normalize`).

Prompts are built in code or loaded from YAML/JSON (`load_prompt`, `FewShotPrompt.from_dict`),
and `to_dict()` gives a JSON-able dict (used by presets, the playground and the file round trip).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

INPUT = "{input}"
OUTPUT = "{output}"
DEFAULT_SEPARATOR = "###"
DEFAULT_FORMAT = "Input: {input}\nOutput: {output}"


class PromptError(ValueError):
    """A prompt definition is invalid (bad format, missing field, wrong type)."""


@dataclass(frozen=True)
class Example:
    """One demonstration: an input and the answer the model should learn to give."""

    input: str
    output: str

    @classmethod
    def coerce(cls, value: Example | Mapping[str, Any] | Sequence[str]) -> Example:
        """Accept an Example, a {"input", "output"} mapping or an (input, output) pair."""
        if isinstance(value, Example):
            return value
        if isinstance(value, Mapping):
            try:
                return cls(str(value["input"]), str(value["output"]))
            except KeyError as exc:
                raise PromptError(
                    f"an example needs 'input' and 'output', got {dict(value)}"
                ) from exc
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
            return cls(str(value[0]), str(value[1]))
        raise PromptError(f"cannot read an example from {value!r}")


def check_format(fmt: str) -> None:
    """Raise PromptError unless `fmt` has one {output} at its end and at least one {input}."""
    if fmt.count(OUTPUT) != 1:
        raise PromptError("the format needs exactly one {output} placeholder")
    if not fmt.rstrip().endswith(OUTPUT):
        raise PromptError("{output} must end the format (only whitespace may follow it)")
    if INPUT not in fmt:
        raise PromptError("the format needs an {input} placeholder")


@dataclass
class FewShotPrompt:
    """A few-shot prompt. `render()` gives the text sent to the model."""

    description: str = ""
    examples: list[Example] = field(default_factory=list)
    format: str = DEFAULT_FORMAT
    separator: str = DEFAULT_SEPARATOR
    query: str | None = None
    name: str | None = None
    # Suggested generation settings (presets fill these; the client and playground read them).
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_format(self.format)
        if not self.separator.strip():
            raise PromptError("the separator must contain a visible character")
        self.examples = [Example.coerce(e) for e in self.examples]

    # -- rendering ---------------------------------------------------------------------------
    @property
    def _head(self) -> str:
        return self.format.split(OUTPUT, 1)[0]

    @property
    def answer_prefix(self) -> str:
        """The whitespace between the answer cue and the answer (usually one space)."""
        head = self._head
        return head[len(head.rstrip(" \t")) :]

    def render_example(self, example: Example) -> str:
        """One demonstration block: the format filled with the example (trailing space removed)."""
        head = self._head.replace(INPUT, example.input.strip())
        return (head + example.output.strip()).rstrip()

    def render_query(self, query: str) -> str:
        """The last block: the format up to {output}, without trailing spaces or tabs."""
        return self._head.replace(INPUT, query.strip()).rstrip(" \t")

    def render(self, query: str | None = None) -> str:
        """The whole prompt for `query` (or `self.query`); without a query, only the demos."""
        q = self.query if query is None else query
        blocks = [self.description.strip()] if self.description.strip() else []
        blocks += [self.render_example(e) for e in self.examples]
        if q is not None:
            blocks.append(self.render_query(q))
        return f"\n{self.separator}\n".join(blocks)

    def continuation(self, answer: str) -> str:
        """What follows the rendered query when the answer is `answer` (for log-likelihoods)."""
        return self.answer_prefix + answer.strip()

    @property
    def stop(self) -> list[str]:
        """Stop sequences for generation: the separator."""
        return [self.separator]

    def parse_answer(self, generated: str, first_line: bool = True) -> str:
        """Cut a generation at the separator and strip it; optionally keep the first line only."""
        text = generated.split(self.separator, 1)[0].strip()
        if first_line:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            text = lines[0] if lines else ""
        return text

    # -- construction helpers ----------------------------------------------------------------
    def with_examples(self, examples: Iterable[Example | Mapping[str, Any]]) -> FewShotPrompt:
        """A copy with other examples (same description, format and separator)."""
        return FewShotPrompt(
            description=self.description,
            examples=[Example.coerce(e) for e in examples],
            format=self.format,
            separator=self.separator,
            query=self.query,
            name=self.name,
            parameters=dict(self.parameters),
        )

    # -- files and dicts ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; `from_dict(to_dict())` gives an equal prompt."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "format": self.format,
            "separator": self.separator,
            "examples": [{"input": e.input, "output": e.output} for e in self.examples],
            "query": self.query,
            "parameters": dict(self.parameters),
        }
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FewShotPrompt:
        """Build from a dict as written by `to_dict` (or a YAML/JSON file)."""
        if not isinstance(data, Mapping):
            raise PromptError("a prompt definition must be a mapping")
        known = {"name", "description", "format", "separator", "examples", "query", "parameters"}
        unknown = set(data) - known
        if unknown:
            raise PromptError(f"unknown prompt fields: {sorted(unknown)}")
        examples = data.get("examples") or []
        if not isinstance(examples, list):
            raise PromptError("'examples' must be a list")
        return cls(
            description=str(data.get("description") or ""),
            examples=[Example.coerce(e) for e in examples],
            format=str(data.get("format") or DEFAULT_FORMAT),
            separator=str(data.get("separator") or DEFAULT_SEPARATOR),
            query=None if data.get("query") is None else str(data["query"]),
            name=data.get("name"),
            parameters=dict(data.get("parameters") or {}),
        )

    def save(self, path: str | Path) -> Path:
        """Write YAML (.yaml/.yml) or JSON (anything else)."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() in {".yaml", ".yml"}:
            text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1000)
        else:
            text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        path.write_text(text, encoding="utf-8")
        return path


def parse_prompt_text(text: str, suffix: str = ".yaml") -> FewShotPrompt:
    """Parse a YAML or JSON prompt definition (JSON is valid YAML, but keep errors precise)."""
    try:
        data = json.loads(text) if suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PromptError(f"cannot parse prompt file: {exc}") from exc
    return FewShotPrompt.from_dict(data)


def load_prompt(path: str | Path) -> FewShotPrompt:
    """Read a prompt from a YAML or JSON file."""
    path = Path(path)
    return parse_prompt_text(path.read_text(encoding="utf-8"), path.suffix)
