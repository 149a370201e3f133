"""How far int8 weights move the model: top-1 agreement with fp32 on a fixed set of prompts.

Run as `python -m fewshot.bench.agreement --model SRC --prompts FILE`; prints one JSON line.
Teacher-forced: both models read the same prompt tokens and we compare their argmax at every
position (prompts from the benchmark's prompt file: the cold single-request prompts and the
few-shot prefix with each query). Also greedy: the first 16 generated tokens of each prompt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from fewshot.models.loading import load_model
from fewshot.models.standalone import new_cache, run


def _prompts(path: Path, limit: int) -> list[str]:
    data = json.loads(path.read_text())
    texts = list(data["cold"]) + [data["prefix"] + q for q in data["single_queries"]]
    return texts[:limit]


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
def agreement(source: str, prompts: list[str], greedy_tokens: int = 16) -> dict[str, Any]:
    """Top-1 agreement of int8 with fp32 (teacher-forced and greedy) over `prompts`."""
    fp32, int8 = load_model(source, dtype="fp32"), load_model(source, dtype="int8")
    same = total = greedy_same = 0
    for text in prompts:
        ids = fp32.tokenizer.encode(text)
        a = run(fp32.model, torch.tensor(ids), [new_cache(fp32.model)], [len(ids)], "all")
        b = run(int8.model, torch.tensor(ids), [new_cache(int8.model)], [len(ids)], "all")
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(ids)
        ga, gb = _greedy(fp32.model, ids, greedy_tokens), _greedy(int8.model, ids, greedy_tokens)
        greedy_same += sum(x == y for x, y in zip(ga, gb, strict=True))
    return {
        "prompts": len(prompts),
        "positions": total,
        "teacher_forced_top1": same / total,
        "greedy_tokens": greedy_tokens * len(prompts),
        "greedy_top1": greedy_same / (greedy_tokens * len(prompts)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--limit", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(agreement(args.model, _prompts(args.prompts, args.limit))), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
