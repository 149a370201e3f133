"""int8 kernels on the real shapes, and int8 decode steps, against fp32 and the previous int8.

Run as `python -m fewshot.bench.int8_kernels [--threads 1] [--rounds 5] [--model gemma-3-270m]`.
Prints the CPU flags that matter, then one line per (shape, M) with the median time of:
- fp32: `F.linear` on the float weight;
- legacy: the previous int8 path (fbgemm dynamic quantization with every row scaled into a
  pinned [-1, 1] range: 7-bit activations, 81-85% top-1 agreement), rebuilt here as the baseline;
- int8-1p / int8-2p: `Int8Linear` with one / two weight planes (two 7-bit activation limbs);
and its relative error against fp32. With --model, also the median ms per decode step (batch 1
and 8) of the model in fp32, legacy int8 and ours, all in this one process, rounds interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.models.quant import Int8Linear, quantize_weight, select_kernel

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


class LegacyInt8Linear(nn.Module):
    """The previous int8 Linear (fbgemm dynamic, rows pinned to [-1, 1]), for comparison."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        q, s = quantize_weight(weight)
        padded = torch.cat([q, torch.zeros(q.shape[0], 2, dtype=torch.int8)], dim=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            zero = torch.zeros(q.shape[0], dtype=torch.long)
            qw = torch._make_per_channel_quantized_tensor(padded, s.double(), zero, 0)
            self.packed = torch.ops.quantized.linear_prepack(qw, None)
        self.bias = bias
        self.out_features = q.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).float()
        a = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
        pins = torch.tensor([[1.0, -1.0]]).expand(x2.shape[0], 2)
        y = torch.ops.quantized.linear_dynamic(torch.cat([x2 / a, pins], 1), self.packed, True)
        y = y * a
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*lead, self.out_features)


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
        "kernel": select_kernel(),
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


@torch.inference_mode()
def kernels(rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for label, (k, n) in SHAPES.items():
        w = torch.randn(n, k, generator=gen) * 0.02
        mods = {
            "legacy": LegacyInt8Linear(w, None),
            "int8-1p": Int8Linear.from_float(w, planes=1),
            "int8-2p": Int8Linear.from_float(w, planes=2),
        }
        reps = 2 if n > 100_000 else 20
        for m in (1, 8):
            x = torch.randn(m, k, generator=gen)
            want = F.linear(x, w)
            fns: dict[str, Callable[[], object]] = {"fp32": lambda x=x, w=w: F.linear(x, w)}
            fns.update({name: (lambda x=x, mod=mod: mod(x)) for name, mod in mods.items()})
            ms = _median_ms(fns, rounds, reps)
            err = {name: float((mod(x) - want).norm() / want.norm()) for name, mod in mods.items()}
            row = {
                "shape": label,
                "M": m,
                "ms": ms,
                "rel_err": {a: f"{e:.1e}" for a, e in err.items()},
            }
            print(json.dumps(row), flush=True)


@torch.inference_mode()
def decode(source: str, rounds: int) -> None:
    from fewshot.models.loading import load_model
    from fewshot.models.quant import quantize_model
    from fewshot.models.standalone import Arena, run

    base = load_model(source, dtype="fp32")
    models = {"fp32": base.model}
    legacy = load_model(source, dtype="fp32").model
    for name, mod in list(legacy.named_modules()):
        if isinstance(mod, nn.Linear):
            parent, _, child = name.rpartition(".")
            owner = legacy.get_submodule(parent) if parent else legacy
            setattr(owner, child, LegacyInt8Linear(mod.weight.detach(), mod.bias))
    models["legacy-int8"] = legacy
    models["int8"] = quantize_model(load_model(source, dtype="fp32").model)
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
    p.add_argument("--threads", type=int, default=1)
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
