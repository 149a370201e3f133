"""Few-shot evaluation: accuracy vs number of examples k, per model, task and method.

Methods:
* ``generate``: greedy generation stopped at the separator; the parsed answer (cut at the
  separator, stripped, first line) must equal an accepted answer after normalisation.
* ``rank``: rank classification for tasks with a label set: the label whose continuation
  (answer prefix + label) has the highest log-likelihood after the query wins.
* ``classifier``: the production path: all-MiniLM-L6-v2 embeddings + LogisticRegression trained
  on the same k demonstrations (tasks with labels, k >= 1).

Protocol: each task's test items are fixed once (a seeded, label-balanced selection of `limit`
items); the demonstrations come from the remaining items. For each seed a demonstration sequence
is drawn (label-balanced round robin for classification tasks) and the k-shot prompt uses its
first k items, shuffled, so the k's of one seed are nested. k = 0 has no demonstrations and runs
once. Costs are wall-clock milliseconds per query on this machine, amortised over a run: prompting
sends `concurrency` queries at a time (the engine batches them and its prefix cache serves the
shared demonstrations), the classifier embeds the test items as one batch.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fewshot.toolkit.backends import Backend, RankUnavailable
from fewshot.toolkit.classifier import Embedder, TaskClassifier
from fewshot.toolkit.datasets import EvalTask, Item
from fewshot.toolkit.scoring import exact_match, mean_std, rank_choice

METHODS = ("generate", "rank", "classifier")
CLASSIFIER_MODEL = "all-MiniLM-L6-v2 + LogisticRegression"


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    limit: int = 20
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    split_seed: int = 1234

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
        if any(k < 0 for k in self.ks) or not self.ks:
            raise ValueError("ks must be non-negative integers")
        if not self.seeds or self.limit < 1:
            raise ValueError("need at least one seed and limit >= 1")


@dataclass
class RunResult:
    """One (model, task, method, k, seed) run over the test items."""

    model: str
    task: str
    method: str
    k: int
    seed: int
    accuracy: float
    n: int
    ms_per_query: float
    items: list[dict[str, Any]] = field(default_factory=list)


def _balanced(
    items: Sequence[Item], rng: random.Random, labels: Sequence[str] | None
) -> list[Item]:
    """A shuffled order; for labelled tasks a round robin over labels (in a seeded label order)."""
    if not labels:
        out = list(items)
        rng.shuffle(out)
        return out
    by_label: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_label[it.output].append(it)
    order = [lab for lab in labels if by_label.get(lab)]
    rng.shuffle(order)
    for lab in order:
        rng.shuffle(by_label[lab])
    out: list[Item] = []
    for i in range(max(len(v) for v in by_label.values())):
        out += [by_label[lab][i] for lab in order if i < len(by_label[lab])]
    return out


def split_items(
    task: EvalTask, limit: int, reserve: int, seed: int = 1234
) -> tuple[list[Item], list[Item]]:
    """(test items, demonstration pool): at most `limit` test items, `reserve` kept for demos."""
    order = _balanced(task.items, random.Random(seed), task.labels)
    n_test = max(1, min(limit, len(order) - reserve))
    return order[:n_test], order[n_test:]


def draw_sequence(
    pool: Sequence[Item], n: int, seed: int, labels: Sequence[str] | None
) -> list[Item]:
    """The seed's demonstration sequence (k-shot prompts use a shuffled prefix of it)."""
    return _balanced(pool, random.Random(seed), labels)[:n]


def demonstrations(sequence: Sequence[Item], k: int, seed: int) -> list[Item]:
    demos = list(sequence[:k])
    random.Random(seed * 1009 + k).shuffle(demos)
    return demos


def _runs_for(config: EvalConfig) -> list[tuple[int, int]]:
    """(k, seed) pairs: k = 0 once (no examples to draw), others for every seed."""
    pairs = []
    for k in sorted(set(config.ks)):
        for seed in config.seeds[:1] if k == 0 else config.seeds:
            pairs.append((k, seed))
    return pairs


def count_units(tasks: Sequence[EvalTask], config: EvalConfig, n_models: int) -> int:
    """Queries the evaluation will make (for a progress bar)."""
    total = 0
    max_k = max(config.ks)
    for task in tasks:
        n_test = len(split_items(task, config.limit, max_k, config.split_seed)[0])
        pairs = _runs_for(config)
        for method in config.methods:
            if method != "generate" and not task.is_classification:
                continue
            runs = [p for p in pairs if not (method == "classifier" and p[0] == 0)]
            total += n_test * len(runs) * (1 if method == "classifier" else n_models)
    return total


class Evaluator:
    """Runs the protocol; `progress(n)` is called after every n queries."""

    def __init__(
        self,
        tasks: Sequence[EvalTask],
        config: EvalConfig,
        embedder: Embedder | None = None,
        progress: Callable[[int], Any] | None = None,
        concurrency: int = 8,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.tasks = list(tasks)
        self.config = config
        self.embedder = embedder
        self.progress = progress or (lambda n: None)
        self.notes: list[str] = []
        self.max_k = max(config.ks)
        self.splits = {
            t.name: split_items(t, config.limit, self.max_k, config.split_seed) for t in self.tasks
        }

    def _prompts(self, task: EvalTask):  # noqa: ANN202 - generator of (k, seed, demos)
        _, pool = self.splits[task.name]
        for k, seed in _runs_for(self.config):
            seq = draw_sequence(pool, self.max_k, seed, task.labels)
            if k > len(seq):
                self.notes.append(f"{task.name}: only {len(seq)} demonstrations for k={k}")
                continue
            yield k, seed, demonstrations(seq, k, seed)

    # -- prompting ---------------------------------------------------------------------------
    def run_model(self, backend: Backend) -> list[RunResult]:
        out: list[RunResult] = []
        for task in self.tasks:
            if "generate" in self.config.methods:
                out += [self._generate(backend, task, k, s, d) for k, s, d in self._prompts(task)]
            if "rank" in self.config.methods and task.is_classification:
                try:
                    out += [self._rank(backend, task, k, s, d) for k, s, d in self._prompts(task)]
                except RankUnavailable as exc:
                    self.notes.append(f"rank classification skipped for {backend.name}: {exc}")
        return out

    def _generate(
        self, backend: Backend, task: EvalTask, k: int, seed: int, demos: list[Item]
    ) -> RunResult:
        test, _ = self.splits[task.name]
        prompt = task.prompt(demos)

        def one(item: Item) -> str:
            raw = backend.generate(prompt.render(item.input), task.max_new_tokens, prompt.stop)
            self.progress(1)
            return raw

        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            raws = list(pool.map(one, test))
        elapsed = time.perf_counter() - t0
        rows = []
        for item, raw in zip(test, raws, strict=True):
            answer = prompt.parse_answer(raw)
            rows.append(
                {
                    "input": item.input,
                    "gold": item.output,
                    "raw": raw,
                    "prediction": answer,
                    "correct": exact_match(answer, item.answers),
                }
            )
        return _result(backend.name, task, "generate", k, seed, rows, elapsed)

    def _rank(
        self, backend: Backend, task: EvalTask, k: int, seed: int, demos: list[Item]
    ) -> RunResult:
        test, _ = self.splits[task.name]
        prompt = task.prompt(demos)
        labels = list(task.labels or [])
        rows, elapsed = [], 0.0
        for start in range(0, len(test), self.concurrency):  # one batch of pairs per chunk
            chunk = test[start : start + self.concurrency]
            pairs = [
                (prompt.render(item.input), prompt.continuation(lab))
                for item in chunk
                for lab in labels
            ]
            t0 = time.perf_counter()
            flat = backend.loglikelihood(pairs)
            elapsed += time.perf_counter() - t0
            for i, item in enumerate(chunk):
                scores = flat[i * len(labels) : (i + 1) * len(labels)]
                pred = rank_choice(scores, labels)
                rows.append(
                    {
                        "input": item.input,
                        "gold": item.output,
                        "prediction": pred,
                        "scores": dict(zip(labels, scores, strict=True)),
                        "correct": pred == item.output,
                    }
                )
            self.progress(len(chunk))
        return _result(backend.name, task, "rank", k, seed, rows, elapsed)

    # -- embedding classifier ----------------------------------------------------------------
    def run_classifier(self) -> list[RunResult]:
        if "classifier" not in self.config.methods:
            return []
        self.embedder = self.embedder or Embedder()
        self.embedder.encode(["warm-up"])  # load the model before anything is timed
        out = []
        for task in (t for t in self.tasks if t.is_classification):
            test, _ = self.splits[task.name]
            # Cost per query: the test items embedded as one batch, like the prompting methods'
            # concurrent queries, plus the prediction.
            t0 = time.perf_counter()
            x_test = self.embedder.encode([item.input for item in test])
            embed_s = time.perf_counter() - t0
            cache: dict[str, np.ndarray] = {}
            for k, seed, demos in self._prompts(task):
                if k == 0:
                    continue
                missing = [d.input for d in demos if d.input not in cache]
                if missing:
                    cache.update(zip(missing, self.embedder.encode(missing), strict=True))
                clf = TaskClassifier.fit(
                    np.stack([cache[d.input] for d in demos]), [d.output for d in demos]
                )
                t0 = time.perf_counter()
                preds = clf.predict_vectors(x_test)
                elapsed = embed_s + time.perf_counter() - t0
                rows = [
                    {
                        "input": it.input,
                        "gold": it.output,
                        "prediction": p.label,
                        "score": p.score,
                        "correct": p.label == it.output,
                    }
                    for it, p in zip(test, preds, strict=True)
                ]
                self.progress(len(rows))
                out.append(_result(CLASSIFIER_MODEL, task, "classifier", k, seed, rows, elapsed))
        return out


def _result(
    model: str,
    task: EvalTask,
    method: str,
    k: int,
    seed: int,
    rows: list[dict[str, Any]],
    elapsed: float,
) -> RunResult:
    n = len(rows)
    acc = sum(r["correct"] for r in rows) / n if n else 0.0
    return RunResult(model, task.name, method, k, seed, acc, n, elapsed * 1000 / max(n, 1), rows)


def summarize(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Mean and std of accuracy over seeds, per (model, task, method, k)."""
    groups: dict[tuple[str, str, str, int], list[RunResult]] = defaultdict(list)
    for r in runs:
        groups[(r.model, r.task, r.method, r.k)].append(r)
    out = []
    for (model, task, method, k), rs in sorted(groups.items()):
        mean, std = mean_std([r.accuracy for r in rs])
        out.append(
            {
                "model": model,
                "task": task,
                "method": method,
                "k": k,
                "accuracy": mean,
                "std": std,
                "seeds": len(rs),
                "n": rs[0].n,
                "ms_per_query": sum(r.ms_per_query for r in rs) / len(rs),
            }
        )
    return out


def results_document(runs: Sequence[RunResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON written by `fewshot eval`: meta, summary rows and every run with its items."""
    return {"meta": meta, "summary": summarize(runs), "runs": [asdict(r) for r in runs]}
