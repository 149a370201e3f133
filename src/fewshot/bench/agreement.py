"""How far int8 weights move the model: top-1 agreement with fp32 on a fixed set of prompts.

Run as `python -m fewshot.bench.agreement --model SRC [--prompts FILE] [--dtype int8]`; prints
one JSON line. Teacher-forced: both models read the same prompt tokens and we compare their
argmax at every position (prompts from the benchmark's prompt file: the cold single-request
prompts and the few-shot prefix with each query; without a file, the same kinds of prompts are
built for the model's tokenizer, plus unrelated prose). Also greedy: the first 16 generated
tokens of each prompt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from fewshot.bench import prompts
from fewshot.models.loading import load_model
from fewshot.models.standalone import new_cache, run


def _prompts(path: Path, limit: int) -> list[str]:
    data = json.loads(path.read_text())
    texts = list(data["cold"]) + [data["prefix"] + q for q in data["single_queries"]]
    return texts[:limit]


def default_prompts(count_tokens: prompts.CountTokens, limit: int) -> list[str]:
    """Few-shot prompts of ~350 tokens (cold, and a shared prefix + query) and unrelated prose."""
    n = max(1, limit // 3)
    cold = prompts.cold_prompts(count_tokens, n, 350)
    prefix = prompts.few_shot_prefix(count_tokens, 300)
    shared = [prefix + q for q in prompts.queries(n)]
    prose = prompts.unrelated_prompts(count_tokens, limit - 2 * n, 300)
    return [t for trio in zip(cold, shared, prose, strict=False) for t in trio] + prose[n:]


@torch.inference_mode()
def _greedy(model: Any, ids: list[int], steps: int) -> list[int]:
    cache = new_cache(model)
    logits = run(model, torch.tensor(ids), [cache], [len(ids)])
    out: list[int] = []
    for _ in range(steps):
        nxt = int(logits[0].argmax())
        out.append(nxt)
        logits = run(model, torch.tensor([nxt]), [cache], [1])
    return out


@torch.inference_mode()
def agreement(
    source: str,
    texts: list[str] | None = None,
    greedy_tokens: int = 16,
    dtype: str = "int8",
    limit: int = 6,
) -> dict[str, Any]:
    """Top-1 agreement of `dtype` with fp32 (teacher-forced and greedy) over `texts`."""
    fp32, int8 = load_model(source, dtype="fp32"), load_model(source, dtype=dtype)
    if texts is None:
        texts = default_prompts(lambda t: len(fp32.tokenizer.encode(t)), limit)
    same = total = greedy_same = 0
    for text in texts:
        ids = fp32.tokenizer.encode(text)
        a = run(fp32.model, torch.tensor(ids), [new_cache(fp32.model)], [len(ids)], "all")
        b = run(int8.model, torch.tensor(ids), [new_cache(int8.model)], [len(ids)], "all")
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(ids)
        ga, gb = _greedy(fp32.model, ids, greedy_tokens), _greedy(int8.model, ids, greedy_tokens)
        greedy_same += sum(x == y for x, y in zip(ga, gb, strict=True))
    return {
        "dtype": dtype,
        "prompts": len(texts),
        "positions": total,
        "teacher_forced_top1": same / total,
        "greedy_tokens": greedy_tokens * len(texts),
        "greedy_top1": greedy_same / (greedy_tokens * len(texts)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", type=Path, default=None)
    p.add_argument("--dtype", default="int8", help="compared with fp32 (default int8)")
    p.add_argument("--limit", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = _prompts(args.prompts, args.limit) if args.prompts else None
    result = agreement(args.model, texts, dtype=args.dtype, limit=args.limit)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
