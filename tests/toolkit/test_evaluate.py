"""The evaluation protocol: leave-one-out selection, nearest neighbours, calibration, intervals,
results rows, report and plot, with scripted backends whose answers are known."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from fewshot.toolkit.calibration import calibrate, content_free_prior
from fewshot.toolkit.datasets import EvalTask, Item, load_task, task_names
from fewshot.toolkit.evaluate import (
    RESULT_FIELDS,
    EvalConfig,
    Evaluator,
    count_units,
    prepare,
)
from fewshot.toolkit.plots import plot_accuracy
from fewshot.toolkit.report import markdown_report
from fewshot.toolkit.scoring import wilson_interval
from fewshot.toolkit.selection import nearest_demos, random_demos


def _task(n: int = 24, dup: bool = False) -> EvalTask:
    items = [Item(f"text {i}", "positive" if i % 2 else "negative") for i in range(n)]
    if dup:  # the same text twice: its twin must not be an example for it either
        items.append(Item("text 3", "positive"))
    return EvalTask(
        "toy",
        "toy",
        "Classify.",
        "Input: {input}\nOutput: {output}",
        items,
        labels=["negative", "positive"],
    )


class ScriptedBackend:
    """Generates the gold answer for known inputs; rank scores favour `bias` by `strength`."""

    name = "scripted"

    def __init__(self, gold: dict[str, str], bias: str | None = None, strength: float = 0.0):
        self.gold, self.bias, self.strength = gold, bias, strength
        self.prompts: list[str] = []

    @staticmethod
    def _query(prompt: str) -> str:
        return prompt.rsplit("\n", 2)[-2].split(":", 1)[1].strip()

    def generate(self, prompt: str, max_new_tokens: int, stop: list[str]) -> str:
        self.prompts.append(prompt)
        return f" {self.gold.get(self._query(prompt), 'nonsense')}\n###"

    def loglikelihood(self, pairs: Any) -> list[float]:
        out = []
        for ctx, cont in pairs:
            self.prompts.append(ctx)
            label = cont.strip()
            score = 0.0 if self.gold.get(self._query(ctx)) == label else -1.0
            out.append(score + (self.strength if label == self.bias else 0.0))
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted", "model": self.name}


def test_leave_one_out_never_uses_the_query_or_its_duplicate() -> None:
    task = _task(dup=True)
    texts = [i.input for i in task.items]
    labels = [i.output for i in task.items]
    queries = list(range(len(texts)))
    vectors = np.eye(len(texts), dtype=np.float32)
    vectors[-1] = vectors[3]  # the duplicate text has the same embedding
    for k in (1, 4, 8):
        for seed in range(5):
            for q, demos in zip(
                queries, random_demos(texts, labels, queries, k, seed), strict=True
            ):
                assert len(demos) == k and q not in demos
                assert all(texts[d] != texts[q] for d in demos)
        for q, demos in zip(queries, nearest_demos(vectors, texts, queries, k), strict=True):
            assert len(demos) == k and q not in demos
            assert all(texts[d] != texts[q] for d in demos)


def test_random_demos_are_balanced_and_shared_across_queries() -> None:
    task = _task()
    texts = [i.input for i in task.items]
    labels = [i.output for i in task.items]
    demos = random_demos(texts, labels, list(range(len(texts))), 4, seed=1)
    assert all(Counter(labels[d] for d in ds) == {"positive": 2, "negative": 2} for ds in demos)
    common = Counter(tuple(ds) for ds in demos).most_common(1)[0][1]
    assert common >= len(texts) - 4  # one prompt prefix for all but the queries it contains
    assert demos == random_demos(texts, labels, list(range(len(texts))), 4, seed=1)  # seeded


def test_similar_returns_the_true_nearest_neighbours_nearest_last() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 5))
    vectors = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    texts = [f"t{i}" for i in range(30)]
    queries = [0, 7, 29]
    for q, demos in zip(queries, nearest_demos(vectors, texts, queries, 5), strict=True):
        sims = vectors @ vectors[q]
        brute = sorted((i for i in range(30) if i != q), key=lambda i: -sims[i])[:5]
        assert demos == brute[::-1]  # the same set, nearest right before the query


def test_calibration_removes_a_constant_label_bias() -> None:
    # A prompt that favours "positive" whatever the input: content-free inputs reveal it.
    prior = content_free_prior([[1.0, -1.0], [1.2, -1.1], [0.8, -0.9]])
    assert prior[0] > 0.85
    assert np.argmax(calibrate([1.0, 0.0], prior)) == 1  # a negative item rescued
    assert np.argmax(calibrate([2.0, -1.0], prior)) == 0  # a positive one kept
    assert calibrate([0.3, 0.1], prior).sum() == pytest.approx(1.0)


def test_calibrated_rank_beats_a_biased_model() -> None:
    task = _task()
    gold = {i.input: i.output for i in task.items}
    config = EvalConfig(ks=[0, 2], seeds=[0], methods=["rank"], calibrate=True)
    ev = Evaluator([task], config)
    ev.run_model(ScriptedBackend(gold, bias="positive", strength=2.0))
    rows = {(r["k"], r["calibrated"]): r for r in ev.results()}
    assert rows[(2, False)]["accuracy"] == 0.5  # always "positive"
    assert rows[(2, True)]["accuracy"] == 1.0 and rows[(0, True)]["accuracy"] == 1.0
    assert rows[(2, True)]["n"] == len(task.items)


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval_on_known_counts(correct: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=1e-4)


def test_evaluator_rows_progress_report_and_plot(tmp_path: Any) -> None:
    tasks = [_task(), load_task("capitals")]
    gold = {i.input: i.output for t in tasks for i in t.items}
    config = EvalConfig(
        ks=[0, 2],
        seeds=[0, 1],
        limit=10,
        methods=["generate", "rank", "classifier"],
        selects=["random", "similar"],
        calibrate=True,
    )
    ev = Evaluator(tasks, config)
    for d in ev.data:  # a toy embedding instead of MiniLM: row i is e_i
        d.vectors = np.eye(len(d.rows), dtype=np.float32)
    done: list[int] = []
    ev.progress = done.append
    backend = ScriptedBackend(gold)
    ev.run_model(backend)
    ev.run_classifier()
    assert sum(done) == count_units(ev.data, config, n_models=1)
    results = ev.results()
    assert all(tuple(r) == RESULT_FIELDS for r in results)
    by = {(r["task"], r["method"], r["k"], r["select"], r["calibrated"]): r for r in results}
    assert by[("capitals", "generate", 2, "random", False)]["n"] == 20  # 10 queries x 2 seeds
    assert by[("capitals", "generate", 2, "similar", False)]["n"] == 10  # seed-independent
    assert by[("capitals", "generate", 0, "similar", False)]["accuracy"] == 1.0  # k=0 under both
    assert ("capitals", "rank", 2, "random", False) not in by  # no labels, no rank
    assert ("toy", "classifier", 0, "random", False) not in by
    row = by[("toy", "rank", 2, "similar", True)]
    assert row["accuracy"] == 1.0 and row["ci_low"] == pytest.approx(0.7225, abs=1e-4)
    # Prompts hold k examples and end with the query's answer cue, no trailing space.
    two_shot = [p for p in backend.prompts if p.count("\n###\n") == 3]
    assert two_shot and all(p.endswith("Capital:") or p.endswith("Output:") for p in two_shot)
    meta = {
        "models": ["scripted"],
        "tasks": [{"name": t.name, "source": t.source} for t in tasks],
        "config": {
            "ks": [0, 2],
            "seeds": [0, 1],
            "selects": ["random", "similar"],
            "calibrate": True,
            "limit": 10,
        },
        "date": "today",
        "seconds": 1.0,
        "machine": "test",
        "notes": ["a note"],
    }
    md = markdown_report(results, meta, "plot.png")
    assert "| toy | rank + calibration | similar | scripted | 10 | 1.00 [0.72, 1.00] |" in md
    assert "calibration: no clear difference" in md and "a note" in md
    png = plot_accuracy(results, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_caps_rows_and_balances_queries() -> None:
    task = load_task("reviews")
    d = prepare(task, EvalConfig(limit=10, pool_limit=10))
    assert len(d.rows) == 10 and d.queries == list(range(10))
    assert Counter(d.rows[q].output for q in d.queries) == {"positive": 5, "negative": 5}
    assert {"bbc_news", "tweets"} <= set(task_names())


def test_load_file_reads_csv_jsonl_and_renamed_fields(tmp_path: Any) -> None:
    from fewshot.toolkit.datasets import load_file

    csv_path = tmp_path / "rows.csv"
    csv_path.write_text('review,stars\n"good, really",5\nbad,1\n,3\nfine,\n')
    task = load_file(csv_path, text_field="review", label_field="stars", description="Stars?")
    assert [(i.input, i.output) for i in task.items] == [("good, really", "5"), ("bad", "1")]
    assert task.labels == ["1", "5"] and task.name == "rows" and task.description == "Stars?"
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n')
    assert len(load_file(jsonl, format="Q: {input}\nA: {output}").items) == 2
    with pytest.raises(ValueError, match="columns"):
        load_file(csv_path)  # no text/label columns
