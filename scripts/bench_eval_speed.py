"""Cost per query of the eval's rank classification and embedding classifier, baseline vs ours,
measured in one run on the same queries, printed as milliseconds and ratios.

* rank: BBC News topics, k random examples (the same prompt prefix for every query).
  Baseline: one `LLM.loglikelihood` call per (query, label), waiting for each before the next.
  Ours: `choices.rank_groups` over a chunk of queries: all their labels in one call, so the
  engine batches them and the prefix cache serves the shared prompt.
* classifier: all-MiniLM-L6-v2 on the queries' texts. Baseline: one `encode` per query.
  Ours: the texts embedded in batches of 64.

    PYTHONPATH=src .venv/bin/python scripts/bench_eval_speed.py --queries 16 --k 4
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from fewshot.engine.llm import LLM
from fewshot.toolkit.choices import llm_scorer, rank_groups
from fewshot.toolkit.classifier import Embedder
from fewshot.toolkit.datasets import load_task
from fewshot.toolkit.evaluate import EvalConfig, prepare
from fewshot.toolkit.selection import random_demos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=8, help="queries per batched call (ours)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    task = load_task("bbc_news")
    data = prepare(task, EvalConfig(limit=args.queries, pool_limit=1000))
    labels = list(task.labels or [])
    demos = random_demos(data.texts, [r.output for r in data.rows], data.queries, args.k, 0)
    groups = []
    for i, q in enumerate(data.queries):
        prompt = task.prompt([data.rows[j] for j in demos[i]])
        groups.append((prompt.render(data.rows[q].input), [prompt.continuation(x) for x in labels]))

    llm = LLM.load(args.model, threads=args.threads)
    score = llm_scorer(llm)
    score([(groups[0][0][:200], " warm")])  # load kernels before timing
    t0 = time.perf_counter()
    for context, conts in groups:
        for cont in conts:
            score([(context, cont)])
    naive = (time.perf_counter() - t0) * 1000 / len(groups)
    # Fresh prompts for ours: drop what the baseline left in the prefix cache.
    groups = [("Article. " + c, conts) for c, conts in groups]
    t0 = time.perf_counter()
    for start in range(0, len(groups), args.chunk):
        rank_groups(score, groups[start : start + args.chunk])
    batched = (time.perf_counter() - t0) * 1000 / len(groups)
    llm.close()

    texts = [data.rows[q].input for q in data.queries]
    embedder = Embedder()
    embedder.encode(["warm-up"])
    t0 = time.perf_counter()
    for text in texts:
        embedder.encode([text])
    one_by_one = (time.perf_counter() - t0) * 1000 / len(texts)
    t0 = time.perf_counter()
    embedder.encode(texts, batch_size=64)
    in_batches = (time.perf_counter() - t0) * 1000 / len(texts)

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{len(groups)} BBC News queries, k={args.k}, {len(labels)} labels, {args.model}")
    print("| what | baseline ms/query | ours ms/query | ratio |")
    print("|---|---|---|---|")
    print(f"| rank | {naive:.0f} (label by label) | {batched:.0f} (one call per "
          f"{args.chunk} queries) | {naive / batched:.1f}x |")  # fmt: skip
    print(f"| classifier embedding | {one_by_one:.1f} (one by one) | {in_batches:.1f} "
          f"(batches of 64) | {one_by_one / in_batches:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
