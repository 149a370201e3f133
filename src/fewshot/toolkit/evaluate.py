"""Few-shot evaluation: accuracy with confidence intervals per model, task, method, k, selection
and calibration.

Methods:
* ``generate``: greedy generation stopped at the separator; the parsed answer (cut at the
  separator, stripped, first line) must equal an accepted answer after normalisation.
* ``rank``: rank classification over the task's labels (`fewshot.toolkit.choices`, the same code
  as the API's ``choices``); with ``calibrate``, also contextual calibration
  (`fewshot.toolkit.calibration`), reported as separate rows with ``calibrated: true``.
* ``classifier``: all-MiniLM-L6-v2 embeddings + LogisticRegression trained on the same k
  demonstrations as the prompt (tasks with labels, k >= 1).

Protocol: a task's rows are put in one seeded, label-balanced order and capped at
``pool_limit``; the first ``limit`` rows are the queries. Every query's demonstrations come from
the other rows, leave-one-out (`fewshot.toolkit.selection`): ``random`` per seed, ``similar``
(k nearest by embedding, nearest last) once. k = 0 has no demonstrations: it runs once and is
reported under every selection. A result row pools the predictions of all seeds: ``n`` is the
number of predictions and [ci_low, ci_high] the 95% Wilson interval of the accuracy.
``ms_per_query`` is wall-clock time per query on this machine, amortised over a run: prompts go
``concurrency`` queries at a time (all labels of a query in one batch sharing the prefix cache),
the classifier's texts are embedded in batches (its cost is the per-text embedding time plus
fitting and prediction).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fewshot.toolkit.backends import Backend, RankUnavailable
from fewshot.toolkit.calibration import CONTENT_FREE, calibrate, content_free_prior
from fewshot.toolkit.choices import rank_groups
from fewshot.toolkit.classifier import Embedder, TaskClassifier
from fewshot.toolkit.datasets import EvalTask, Item
from fewshot.toolkit.scoring import exact_match, wilson_interval
from fewshot.toolkit.selection import SELECTS, balanced_order, nearest_demos, random_demos

METHODS = ("generate", "rank", "classifier")
CLASSIFIER_MODEL = "all-MiniLM-L6-v2 + LogisticRegression"
RESULT_FIELDS = (
    "model",
    "task",
    "method",
    "k",
    "select",
    "calibrated",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "ms_per_query",
)


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    limit: int = 200
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    selects: list[str] = field(default_factory=lambda: ["random"])
    calibrate: bool = False
    pool_limit: int = 2000
    split_seed: int = 1234
    concurrency: int = 8

    def __post_init__(self) -> None:
        for name, given, known in (
            ("methods", self.methods, METHODS),
            ("selects", self.selects, SELECTS),
        ):
            bad = [x for x in given if x not in known]
            if bad or not given:
                raise ValueError(f"unknown or no {name} {bad}; choose from {', '.join(known)}")
        if not self.ks or any(k < 0 for k in self.ks):
            raise ValueError("ks must be non-negative integers")
        if not self.seeds or self.limit < 1 or self.concurrency < 1:
            raise ValueError("need at least one seed, limit >= 1 and concurrency >= 1")
        self.pool_limit = max(self.pool_limit, self.limit)


@dataclass(frozen=True)
class Draw:
    """One way of choosing demonstrations: k, selection and seed; `report` names the selections
    its results count for (all of them for k = 0)."""

    k: int
    select: str
    seed: int
    report: tuple[str, ...]


@dataclass
class TaskData:
    """A task's candidate rows, its queries (indices into rows) and the rows' embeddings."""

    task: EvalTask
    rows: list[Item]
    queries: list[int]
    vectors: np.ndarray | None = None
    embed_ms: float = 0.0  # per text

    @property
    def texts(self) -> list[str]:
        return [r.input for r in self.rows]


def prepare(task: EvalTask, config: EvalConfig) -> TaskData:
    """The seeded, label-balanced candidate rows (at most pool_limit) and the first `limit`."""
    labels = [i.output if task.labels else None for i in task.items]
    order = balanced_order(labels, random.Random(config.split_seed))[: config.pool_limit]
    rows = [task.items[i] for i in order]
    return TaskData(task, rows, list(range(min(config.limit, len(rows)))))


def draws(config: EvalConfig) -> list[Draw]:
    out = []
    for k in sorted(set(config.ks)):
        if k == 0:
            out.append(Draw(0, config.selects[0], config.seeds[0], tuple(config.selects)))
            continue
        for select in config.selects:
            seeds = config.seeds[:1] if select == "similar" else config.seeds
            out += [Draw(k, select, seed, (select,)) for seed in seeds]
    return out


def demos_for(data: TaskData, draw: Draw) -> list[list[int]]:
    """Each query's demonstration row indices for `draw` (never the query)."""
    if draw.select == "similar" and draw.k:
        if data.vectors is None:
            raise ValueError("similar selection needs the rows' embeddings")
        return nearest_demos(data.vectors, data.texts, data.queries, draw.k)
    labels = [r.output if data.task.labels else None for r in data.rows]
    return random_demos(data.texts, labels, data.queries, draw.k, draw.seed)


def _applies(method: str, task: EvalTask, k: int) -> bool:
    if method == "generate":
        return True
    return task.is_classification and (method == "rank" or k > 0)


def count_units(data: Sequence[TaskData], config: EvalConfig, n_models: int) -> int:
    """Queries the evaluation will make (for the progress bar)."""
    total = 0
    for d in data:
        for draw in draws(config):
            if draw.k >= len(d.rows):
                continue
            for method in config.methods:
                if _applies(method, d.task, draw.k):
                    per = 1 if method == "classifier" else n_models
                    total += len(d.queries) * per
    return total


@dataclass
class Cell:
    correct: int = 0
    n: int = 0
    seconds: float = 0.0
    queries: int = 0


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


class Evaluator:
    """Runs the protocol; `progress(n)` is called after every n queries."""

    def __init__(
        self,
        tasks: Sequence[EvalTask],
        config: EvalConfig,
        embedder: Embedder | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> None:
        self.config = config
        self.data = [prepare(t, config) for t in tasks]
        self.embedder = embedder
        self.progress = progress or (lambda n: None)
        self.notes: list[str] = []
        self.cells: dict[tuple[str, str, str, int, str, bool], Cell] = defaultdict(Cell)
        self.predictions: list[dict[str, Any]] = []

    # -- setup ---------------------------------------------------------------------------------
    def embed(self) -> None:
        """Embed every task's rows once (for `similar` and the classifier), in batches."""
        needs = "similar" in self.config.selects or "classifier" in self.config.methods
        if not needs or all(d.vectors is not None for d in self.data):
            return
        self.embedder = self.embedder or Embedder()
        self.embedder.encode(["warm-up"])  # load the model before anything is timed
        for d in self.data:
            if d.vectors is None:
                t0 = time.perf_counter()
                d.vectors = self.embedder.encode(d.texts, batch_size=64)
                d.embed_ms = (time.perf_counter() - t0) * 1000 / max(1, len(d.rows))

    def _draws(self, d: TaskData) -> Iterator[tuple[Draw, list[list[int]]]]:
        for draw in draws(self.config):
            if draw.k >= len(d.rows):
                self.notes.append(f"{d.task.name}: only {len(d.rows)} rows, no k={draw.k}")
                continue
            yield draw, demos_for(d, draw)

    def _record(
        self,
        model: str,
        d: TaskData,
        method: str,
        draw: Draw,
        calibrated: bool,
        outcomes: Sequence[tuple[int, str, bool]],
        seconds: float,
    ) -> None:
        for select in draw.report:
            cell = self.cells[(model, d.task.name, method, draw.k, select, calibrated)]
            cell.correct += sum(ok for _, _, ok in outcomes)
            cell.n += len(outcomes)
            cell.seconds += seconds
            cell.queries += len(outcomes)
        for q, pred, ok in outcomes:
            self.predictions.append(
                {
                    "model": model,
                    "task": d.task.name,
                    "method": method,
                    "k": draw.k,
                    "select": draw.select if draw.k else "-",
                    "seed": draw.seed,
                    "calibrated": calibrated,
                    "input": d.rows[q].input,
                    "gold": d.rows[q].output,
                    "prediction": pred,
                    "correct": ok,
                }
            )

    # -- prompting -----------------------------------------------------------------------------
    def run_model(self, backend: Backend) -> None:
        """Prompt `backend` for every task, draw and method (generate, rank)."""
        if "similar" in self.config.selects:
            self.embed()
        for d in self.data:
            for draw, demos in self._draws(d):
                if "generate" in self.config.methods:
                    self._generate(backend, d, draw, demos)
                if "rank" in self.config.methods and d.task.is_classification:
                    try:
                        self._rank(backend, d, draw, demos)
                    except RankUnavailable as exc:
                        self.notes.append(f"rank skipped for {backend.name}: {exc}")

    def _generate(self, backend: Backend, d: TaskData, draw: Draw, demos: list[list[int]]) -> None:
        task = d.task

        def one(i: int) -> tuple[int, str, bool]:
            prompt = task.prompt([d.rows[j] for j in demos[i]])
            q = d.queries[i]
            raw = backend.generate(prompt.render(d.rows[q].input), task.max_new_tokens, prompt.stop)
            answer = prompt.parse_answer(raw)
            self.progress(1)
            return q, answer, exact_match(answer, d.rows[q].answers)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            outcomes = list(pool.map(one, range(len(d.queries))))
        self._record(backend.name, d, "generate", draw, False, outcomes, time.perf_counter() - t0)

    def _rank(self, backend: Backend, d: TaskData, draw: Draw, demos: list[list[int]]) -> None:
        task, labels = d.task, list(d.task.labels or [])
        priors: dict[tuple[int, ...], np.ndarray] = {}
        for chunk in _chunks(len(d.queries), self.config.concurrency):
            prompts = {i: task.prompt([d.rows[j] for j in demos[i]]) for i in chunk}
            conts = {i: [prompts[i].continuation(lab) for lab in labels] for i in chunk}
            groups = [(prompts[i].render(d.rows[d.queries[i]].input), conts[i]) for i in chunk]
            t0 = time.perf_counter()
            ranked = rank_groups(backend.loglikelihood, groups)
            seconds = time.perf_counter() - t0
            plain = []
            for i, r in zip(chunk, ranked, strict=True):
                q = d.queries[i]
                plain.append((q, labels[r.index], labels[r.index] == d.rows[q].output))
            self._record(backend.name, d, "rank", draw, False, plain, seconds)
            self.progress(len(chunk))
            if not self.config.calibrate:
                continue
            # Content-free inputs in each distinct prompt of the chunk (cached across chunks).
            missing = {tuple(demos[i]): i for i in chunk if tuple(demos[i]) not in priors}
            t0 = time.perf_counter()
            cf_groups = [
                (prompts[i].render(cf), conts[i]) for i in missing.values() for cf in CONTENT_FREE
            ]
            cf_ranked = rank_groups(backend.loglikelihood, cf_groups)
            for n, key in enumerate(missing):
                per = cf_ranked[n * len(CONTENT_FREE) : (n + 1) * len(CONTENT_FREE)]
                priors[key] = content_free_prior([r.logprobs for r in per])
            seconds += time.perf_counter() - t0
            fixed = []
            for i, r in zip(chunk, ranked, strict=True):
                q = d.queries[i]
                pred = labels[int(np.argmax(calibrate(r.logprobs, priors[tuple(demos[i])])))]
                fixed.append((q, pred, pred == d.rows[q].output))
            self._record(backend.name, d, "rank", draw, True, fixed, seconds)

    # -- embedding classifier ------------------------------------------------------------------
    def run_classifier(self) -> None:
        if "classifier" not in self.config.methods:
            return
        self.embed()
        for d in (d for d in self.data if d.task.is_classification):
            assert d.vectors is not None
            for draw, demos in self._draws(d):
                if draw.k == 0:
                    continue
                t0 = time.perf_counter()
                fitted: dict[tuple[int, ...], TaskClassifier] = {}
                outcomes = []
                for i, q in enumerate(d.queries):
                    key = tuple(sorted(demos[i]))
                    if key not in fitted:
                        fitted[key] = TaskClassifier.fit(
                            d.vectors[list(key)], [d.rows[j].output for j in key]
                        )
                    pred = fitted[key].predict_vectors(d.vectors[q : q + 1])[0].label
                    outcomes.append((q, pred, pred == d.rows[q].output))
                seconds = time.perf_counter() - t0 + d.embed_ms * len(d.queries) / 1000
                self._record(CLASSIFIER_MODEL, d, "classifier", draw, False, outcomes, seconds)
                self.progress(len(outcomes))

    # -- results -------------------------------------------------------------------------------
    def results(self) -> list[dict[str, Any]]:
        """One row per (model, task, method, k, select, calibrated): RESULT_FIELDS."""
        out = []
        for (model, task, method, k, select, calibrated), c in sorted(self.cells.items()):
            low, high = wilson_interval(c.correct, c.n)
            out.append(
                {
                    "model": model,
                    "task": task,
                    "method": method,
                    "k": k,
                    "select": select,
                    "calibrated": calibrated,
                    "n": c.n,
                    "accuracy": c.correct / c.n if c.n else 0.0,
                    "ci_low": low,
                    "ci_high": high,
                    "ms_per_query": c.seconds * 1000 / max(1, c.queries),
                }
            )
        return out
