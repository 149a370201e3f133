"""The evaluation protocol, report and plot, with a scripted backend whose answers are known."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from fewshot.toolkit.datasets import load_task, task_names
from fewshot.toolkit.evaluate import (
    EvalConfig,
    Evaluator,
    count_units,
    demonstrations,
    draw_sequence,
    results_document,
    split_items,
)
from fewshot.toolkit.plots import plot_accuracy
from fewshot.toolkit.report import markdown_report


class ScriptedBackend:
    """Answers correctly for inputs in `known` (with the model-like ' answer\\n###' shape)."""

    name = "scripted"

    def __init__(self, gold: dict[str, str], known: set[str]) -> None:
        self.gold, self.known = gold, known
        self.prompts: list[str] = []

    def _query(self, prompt: str) -> str:
        return prompt.rsplit("\n", 2)[-2].split(": ", 1)[1]

    def generate(self, prompt: str, max_new_tokens: int, stop: list[str]) -> str:
        self.prompts.append(prompt)
        q = self._query(prompt)
        return f" {self.gold[q] if q in self.known else 'nonsense'}\n"

    def loglikelihood(self, pairs: Any) -> list[float]:
        return [0.0 if cont.strip() == self.gold[self._query(ctx)] else -1.0 for ctx, cont in pairs]

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted", "model": self.name}


def test_builtin_tasks_are_well_formed() -> None:
    for name in ["antonyms", "capitals", "en_fr", "reviews"]:
        task = load_task(name)
        assert len(task.items) >= 30, name
        inputs = [i.input for i in task.items]
        assert len(set(inputs)) == len(inputs), f"duplicate inputs in {name}"
        if task.labels:
            assert {i.output for i in task.items} == set(task.labels)
    assert {"bbc_news", "tweets"} <= set(task_names())


def test_real_labelled_sets_load() -> None:
    bbc = load_task("bbc_news")
    assert len(bbc.items) > 2000 and bbc.labels == [
        "business",
        "entertainment",
        "politics",
        "sport",
        "tech",
    ]
    tweets = load_task("tweets")
    assert tweets.labels == ["negative", "neutral", "positive"] and len(tweets.items) > 10000


def test_split_is_balanced_and_disjoint() -> None:
    task = load_task("reviews")
    test, pool = split_items(task, limit=10, reserve=8)
    assert Counter(i.output for i in test) == {"positive": 5, "negative": 5}
    assert not {i.input for i in test} & {i.input for i in pool}
    seq = draw_sequence(pool, 8, seed=3, labels=task.labels)
    assert Counter(i.output for i in seq[:4]) == {"positive": 2, "negative": 2}
    assert set(demonstrations(seq, 4, 3)) < set(demonstrations(seq, 8, 3))  # nested k
    assert draw_sequence(pool, 8, 3, task.labels) == seq  # seeded


def test_evaluator_scores_exactly(tmp_path, embedder: Any) -> None:
    tasks = [load_task("reviews"), load_task("capitals")]
    gold = {i.input: i.output for t in tasks for i in t.items}
    config = EvalConfig(ks=[0, 2, 4], seeds=[0, 1], limit=8)
    ev = Evaluator(tasks, config, embedder=embedder)
    known = {i.input for i in ev.splits["capitals"][0][:6]} | {
        i.input for i in ev.splits["reviews"][0]
    }
    backend = ScriptedBackend(gold, known)
    done = []
    ev.progress = done.append
    runs = ev.run_model(backend) + ev.run_classifier()
    assert sum(done) == count_units(tasks, config, n_models=1)
    by = {(r.task, r.method, r.k, r.seed): r for r in runs}
    assert by[("capitals", "generate", 2, 1)].accuracy == 6 / 8
    assert by[("reviews", "generate", 0, 0)].accuracy == 1.0
    assert by[("reviews", "rank", 4, 0)].accuracy == 1.0
    assert ("reviews", "generate", 0, 1) not in by  # k = 0 runs once
    assert ("capitals", "rank", 2, 0) not in by  # no labels, no rank
    assert ("reviews", "classifier", 0, 0) not in by and by[("reviews", "classifier", 4, 1)].n == 8
    # Prompts carry k demonstrations and end with the query, no trailing space.
    four_shot = [p for p in backend.prompts if p.count("\n###\n") == 5]
    assert four_shot and all(p.endswith("Capital:") or p.endswith("Sentiment:") for p in four_shot)

    doc = results_document(
        runs,
        {
            "models": ["scripted"],
            "tasks": [{"name": t.name, "source": t.source} for t in tasks],
            "config": {"ks": config.ks, "seeds": config.seeds, "limit": config.limit},
            "date": "today",
            "seconds": 1.0,
            "machine": "test",
            "notes": ["a note"],
        },
    )
    json.dumps(doc)
    row = next(r for r in doc["summary"] if r["task"] == "capitals" and r["k"] == 2)
    assert row["accuracy"] == 0.75 and row["seeds"] == 2 and row["std"] == 0.0
    md = markdown_report(doc, "plot.png")
    assert "| scripted | capitals | generate | 8 | 0.75 | 0.75 ± 0.00 | 0.75 ± 0.00 |" in md
    assert "![accuracy vs k](plot.png)" in md and "a note" in md
    png = plot_accuracy(doc["summary"], config.ks, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
