"""A/B of engine features on one model, in one process and one run: the plain engine against
prompt-lookup speculation, bf16 KV and the compiled forward, on the few-shot workload.

    python -m fewshot.bench.features --model gemma-3-270m --dtype int8 --rounds 3

Every variant serves the same requests (a ~300-token few-shot prefix shared by all, distinct
queries, greedy, stop at `###`): `--concurrency` clients at once, then one request at a time.
Rounds alternate the variants, so machine noise hits them alike; medians and ratios to the
plain engine are printed (and written as JSON with `--out`). Greedy outputs of the speculative
and compiled variants are checked token for token against the plain engine's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from fewshot.bench.machine import machine_info
from fewshot.bench.prompts import STOP, few_shot_prefix, queries
from fewshot.engine.llm import LLM
from fewshot.engine.types import SamplingParams
from fewshot.models.loading import load_model
from fewshot.models.packed import pack_linears

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "speculative": {"speculative_tokens": 4},
    "bf16-kv": {"kv_dtype": "bf16"},
    "compiled": {"compile": True},
}


def _serve(llm: LLM, prompts: list[str], params: SamplingParams, concurrency: int) -> dict:
    """Send `prompts` `concurrency` at a time; wall time, tokens and the outputs."""
    start = time.perf_counter()
    outputs: list[list[int]] = []
    for i in range(0, len(prompts), concurrency):
        batch = [llm.encode(p) for p in prompts[i : i + concurrency]]
        handles = [llm.submit(ids, params, loop=None, stream=False) for ids in batch]
        outputs += [h.wait()[0].token_ids for h in handles]
    wall = time.perf_counter() - start
    tokens = sum(len(o) for o in outputs)
    return {"wall_s": wall, "tokens": tokens, "outputs": outputs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_model(args.model, dtype=args.dtype)
    tok = loaded.tokenizer
    prefix = few_shot_prefix(lambda text: len(tok.encode(text)), args.prefix_tokens)
    prompts = [prefix + q for q in queries(args.requests, seed=3)]
    params = SamplingParams(max_new_tokens=args.new_tokens, stop=[STOP])
    names = [n for n in args.variants.split(",") if n]
    if not any(VARIANTS[n].get("compile") for n in names):
        pack_linears(loaded.model)  # as `LLM.load` does on the CPU (Inductor packs its own way)
    llms = {
        n: LLM.from_model(loaded.model, tok, name=n, threads=args.threads, **VARIANTS[n])
        for n in names
    }
    results: dict[str, dict[str, list[float]]] = {n: {"batch": [], "single": []} for n in names}
    outputs: dict[str, list[list[int]]] = {}
    for llm in llms.values():  # warm-up: fills each engine's prefix cache once
        _serve(llm, prompts[:2], params, 2)
    for _ in range(args.rounds):
        for name, llm in llms.items():
            batch = _serve(llm, prompts, params, args.concurrency)
            single = _serve(llm, prompts[: args.concurrency], params, 1)
            results[name]["batch"].append(batch["tokens"] / batch["wall_s"])
            results[name]["single"].append(single["tokens"] / single["wall_s"])
            outputs[name] = batch["outputs"]
    report: dict[str, Any] = {
        "model": args.model,
        "dtype": args.dtype,
        "threads": args.threads,
        "machine": machine_info().__dict__,
        "variants": {},
    }
    base = names[0]
    for name, llm in llms.items():
        stats = llm.stats()
        med = {k: statistics.median(v) for k, v in results[name].items()}
        report["variants"][name] = {
            "batch_tokens_per_s": med["batch"],
            "single_tokens_per_s": med["single"],
            "batch_ratio": med["batch"] / statistics.median(results[base]["batch"]),
            "single_ratio": med["single"] / statistics.median(results[base]["single"]),
            "same_tokens_as_plain": outputs[name] == outputs[base],
            "spec_acceptance": stats["spec_acceptance"] if stats["spec_drafted"] else None,
            "kv_pool_mib": llm.engine.runner.pool.nbytes / 2**20 if llm.engine.runner.pool else 0,
        }
        llm.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prefix-tokens", type=int, default=300)
    p.add_argument("--new-tokens", type=int, default=25)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    report = run(args)
    for name, v in report["variants"].items():
        acc = "" if v["spec_acceptance"] is None else f", acceptance {v['spec_acceptance']:.2f}"
        print(
            f"{name:12s} batch {v['batch_tokens_per_s']:7.1f} tok/s ({v['batch_ratio']:.2f}x)  "
            f"single {v['single_tokens_per_s']:6.1f} tok/s ({v['single_ratio']:.2f}x)  "
            f"same tokens: {v['same_tokens_as_plain']}{acc}"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
