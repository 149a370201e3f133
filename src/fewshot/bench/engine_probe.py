"""Our engine in-process, without HTTP: decode time per token, time to first token with a
cached prefix, where the native layers spend a decode step's and a cached-prefix chunk's time
(`native_step.step_phases`), and a torch.profiler table of the operations outside them.

Run as a subprocess by the benchmark (one model load, its own threads, its own memory):
  python -m fewshot.bench.engine_probe --model SRC --dtype int8 --threads 2 --prompts FILE.json
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _decode_s_per_token(result: Any) -> float | None:
    n = len(result.token_ids)
    if n < 2 or result.total_time <= result.time_to_first_token:
        return None
    return (result.total_time - result.time_to_first_token) / (n - 1)


def _decode_loop(model: Any, cache: Any, token: int, steps: int) -> int:
    import torch

    from fewshot.engine.sampling import argmax
    from fewshot.models.standalone import run

    for _ in range(steps):
        logits = run(model, torch.tensor([token], dtype=torch.long), [cache], [1])
        token = int(argmax(logits[0]))  # the engine's greedy pick
    return token


def _phases(read: Any) -> dict[str, Any] | None:
    """The native layers' time since the last read (None: no native layers ran)."""
    if read is None:
        return None
    got = read()
    if not got.calls:
        return None
    return {"seconds": got.seconds, "calls": got.calls, "rows": got.rows}


def _phase_reader() -> Any:
    """A function reading (and resetting) the native layers' phase times, or None without the
    native kernels."""
    from fewshot.models import native
    from fewshot.models.native_step import step_phases

    kernel = native.load()
    return None if kernel is None else lambda: step_phases(kernel)


def _profile(llm: Any, prompt: str, steps: int, rows: int, threads: int) -> dict[str, Any]:
    """Batch-1 greedy decode steps straight on the model (the engine's step loop runs in its own
    thread, which the profiler does not see): time per step without and with torch.profiler,
    and the top ops by self CPU time. The gap to the engine's decode time is the engine's own
    overhead (scheduling, sampling, detokenization)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fewshot.models.standalone import new_cache, run

    torch.set_num_threads(threads)
    model = llm.model
    ids = llm.encode(prompt)
    cache = new_cache(model)
    with torch.inference_mode():
        logits = run(model, torch.tensor(ids, dtype=torch.long), [cache], [len(ids)])
        token = _decode_loop(model, cache, int(logits[0].argmax()), 2)  # warm-up
        read = _phase_reader()
        _phases(read)
        t0 = time.perf_counter()
        token = _decode_loop(model, cache, token, steps)
        step_s = (time.perf_counter() - t0) / steps
        phases = _phases(read)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _decode_loop(model, cache, token, steps)
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {
        "steps": steps,
        "context_tokens": len(ids),
        "forward_s_per_step": step_s,
        "native_phases": phases,  # over the `steps` timed steps
        "torch_threads": torch.get_num_threads(),
        "profiled_self_cpu_s": total_self / 1e6,
        "top_ops": [
            {
                "op": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "share": e.self_cpu_time_total / total_self,
            }
            for e in top
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from fewshot.engine.llm import LLM

    prompts = json.loads(Path(args.prompts).read_text())
    t0 = time.perf_counter()
    from fewshot.engine.config import EngineConfig
    from fewshot.settings import Settings

    # the server's instruction-set cap (FEWSHOT_KERNEL_ISA) and CUDA graphs setting
    # (FEWSHOT_CUDA_GRAPHS) hold for the probe too
    settings = Settings()
    llm = LLM.load(
        args.model, dtype=args.dtype, device=args.device, threads=args.threads,
        kernel_isa=settings.kernel_isa,
        cuda_graphs=EngineConfig.from_settings(settings).cuda_graphs,
    )  # fmt: skip
    load_s = time.perf_counter() - t0
    try:
        cold, prefix, queries = prompts["cold"], prompts["prefix"], prompts["single_queries"]
        llm.generate(cold[0], max_new_tokens=4, do_sample=False, ignore_eos=True)  # warm-up
        decode, ttft, cached, cached_tokens = [], [], [], []
        read, chunk_phases = _phase_reader(), []
        for r in range(args.rounds):
            res = llm.generate(
                cold[1 + r], max_new_tokens=args.new_tokens, do_sample=False, ignore_eos=True
            )
            ttft.append(res.time_to_first_token)
            step = _decode_s_per_token(res)
            if step is not None:
                decode.append(step)
            llm.generate(prefix + queries[2 * r], max_new_tokens=1, do_sample=False)
            _phases(read)
            hit = llm.generate(prefix + queries[2 * r + 1], max_new_tokens=1, do_sample=False)
            chunk_phases.append(_phases(read))
            cached.append(hit.time_to_first_token)
            cached_tokens.append(hit.cached_tokens)
        out: dict[str, Any] = {
            "load_s": load_s,
            "ttft_s": sorted(ttft)[len(ttft) // 2] if ttft else None,
            "decode_s_per_token": sorted(decode)[len(decode) // 2] if decode else None,
            "ttft_cached_prefix_s": sorted(cached)[len(cached) // 2] if cached else None,
            "cached_tokens": cached_tokens,
            "cached_chunk_phases": chunk_phases,  # per round: the native layers' time
            "rounds": {
                "ttft_s": ttft,
                "decode_s_per_token": decode,
                "ttft_cached_prefix_s": cached,
            },
            "stats": llm.stats(),
        }
        if args.profile_tokens > 0:
            # the engine thread ends first: with its OpenMP pool alive beside this thread's,
            # libgomp would throttle the spin and time the forward a third slower than it runs
            llm.close()
            out["profile"] = _profile(
                llm, cold[-1], args.profile_tokens, args.profile_rows, args.threads
            )
        return out
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="int8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--prompts", required=True, help="JSON: cold, prefix, single_queries")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--profile-tokens", type=int, default=32)
    parser.add_argument("--profile-rows", type=int, default=12)
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except Exception as exc:  # reported in the benchmark, not fatal to it
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
