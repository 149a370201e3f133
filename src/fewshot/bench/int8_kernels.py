"""int8 kernels on the real shapes, and int8 decode steps, against fp32, bf16 and torch's int8.

Run as `python -m fewshot.bench.int8_kernels [--threads 2] [--rounds 5] [--model gemma-3-270m]`.
Prints the CPU flags that matter, then one line per (shape, M) with the median time of:
- fp32 / bf16: `F.linear` on the float weight (bf16: prepacked for oneDNN, as the bf16 models);
- torch-int8: `torch._weight_int8pack_mm` (per-row scales, torch's CPU weight-only kernel);
- int8 / int8-avx2: `Int8Linear` (our kernels, on this CPU's instruction set / forced to AVX2);
and the relative error of the int8 ones against fp32. With --model, also the median ms per
decode step (batch 1 and 8) of the model in fp32, bf16 and int8, in one process, rounds
interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.models import native
from fewshot.models.packed import PackedLinear
from fewshot.models.quant import Int8Linear

SHAPES = {  # (in, out): GPT-Neo-125M, then Gemma 3 270M
    "neo qkv/o 768x768": (768, 768),
    "neo fc 768x3072": (768, 3072),
    "neo proj 3072x768": (3072, 768),
    "neo head 768x50257": (768, 50257),
    "gemma up 640x2048": (640, 2048),
    "gemma down 2048x640": (2048, 640),
    "gemma head 640x262144": (640, 262144),
}
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx_vnni")


def cpu_flags() -> dict[str, object]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    model = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), ""
    )
    return {
        "cpu": model,
        "flags": [f for f in FLAGS if f in flags],
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel": None if (k := native.load()) is None else k.isa,
        "threads": torch.get_num_threads(),
    }


def _median_ms(fns: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, float]:
    """Median over `rounds` of the mean of `reps` calls; the candidates interleave each round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[k].append((time.perf_counter() - t0) / reps * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def _candidates(w: torch.Tensor, m: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> f(x float32 [m, in]) for the weight w [out, in]."""
    ours = Int8Linear.from_float(w)
    row_scales = w.abs().amax(1) / 127  # torch's kernel: one scale per row, bf16 activations
    q = torch.round(w / row_scales[:, None]).to(torch.int8)
    bf16 = PackedLinear(_linear(w.bfloat16()))
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "fp32": lambda x: F.linear(x, w),
        "bf16": lambda x: bf16(x.bfloat16()),
        "torch-int8": lambda x: torch._weight_int8pack_mm(x.bfloat16(), q, row_scales.bfloat16()),
        "int8": ours,
    }
    kern = ours.kernel
    if kern is not None and kern.isa == "avx512" and m <= kern.gemv_rows:
        avx2 = native.Kernel(kern.lib, "avx2")
        fns["int8-avx2"] = lambda x: avx2.gemv(x, ours.packed, None)
    return fns


@torch.inference_mode()
def kernels(rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for label, (k, n) in SHAPES.items():
        w = torch.randn(n, k, generator=gen) * 0.02
        reps = 2 if n > 100_000 else 20
        for m in (1, 8, 64):
            x = torch.randn(m, k, generator=gen)
            want = F.linear(x, w)
            fns = _candidates(w, m)
            ms = _median_ms({name: partial(f, x) for name, f in fns.items()}, rounds, reps)
            err = {
                name: f"{float((f(x).float() - want).norm() / want.norm()):.1e}"
                for name, f in fns.items()
                if name != "fp32"
            }
            print(json.dumps({"shape": label, "M": m, "ms": ms, "rel_err": err}), flush=True)


def _linear(w: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    lin.weight.data = w
    return lin


@torch.inference_mode()
def decode(source: str, rounds: int) -> None:
    from fewshot.models.loading import load_model
    from fewshot.models.standalone import Arena, run

    base = load_model(source, dtype="fp32")
    models = {dtype: load_model(source, dtype=dtype).model for dtype in ("bf16", "int8")}
    models["fp32"] = base.model
    ids = torch.tensor(base.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 8))
    for batch in (1, 8):
        state = {}
        for name, model in models.items():
            arena = Arena(model)
            caches = [arena.new_cache() for _ in range(batch)]
            logits = run(model, ids.repeat(batch), caches, [len(ids)] * batch)
            state[name] = [model, caches, logits.argmax(-1)]

        fns = {
            name: (lambda name=name, state=state, b=batch: _step(state[name], b)) for name in models
        }
        ms = _median_ms(fns, rounds, 8)
        print(json.dumps({"model": source, "batch": batch, "ms_per_step": ms}), flush=True)


def _step(state: list, batch: int) -> None:
    """One greedy decode step of every sequence (each model follows its own argmax)."""
    from fewshot.models.standalone import run

    model, caches, tokens = state
    state[2] = run(model, tokens, caches, [1] * batch).argmax(-1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--model", default=None, help="also time decode steps of this model")
    p.add_argument("--no-kernels", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(cpu_flags()), flush=True)
    if not args.no_kernels:
        kernels(args.rounds)
    if args.model:
        decode(args.model, args.rounds)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
