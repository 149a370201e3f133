"""`fewshot bench`: our server against a plain transformers server (and optional peers), same
run, several rounds; writes BENCHMARKS.md and docs/bench.png."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from fewshot.bench.config import DEFAULT_MODELS, QUICK_MODELS, BenchConfig
from fewshot.bench.models import KNOWN_MODELS
from fewshot.bench.peers import DEFAULT_BACKENDS, parse_peer_python
from fewshot.settings import Settings, available_cores

DTYPES = ("auto", "int8", "fp32", "bf16")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _counts(value: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers, e.g. `1,2,4,8`."""
    try:
        counts = tuple(int(v) for v in _csv(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {value!r}")
    return tuple(sorted(set(counts)))


def add_parser(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="benchmark against a transformers baseline and peers", description=__doc__
    )
    p.add_argument(
        "--models",
        type=_csv,
        default=None,
        help=f"comma-separated, from {', '.join(KNOWN_MODELS)} (default: {','.join(DEFAULT_MODELS)}; "
        f"--quick: {','.join(QUICK_MODELS)})",
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="rounds per workload (default 3; --quick 1)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for every engine (default: available cores)",
    )
    p.add_argument(
        "--dtype",
        type=_csv,
        default=["auto", "int8", "fp32"],
        help="our engine's weights, comma-separated; the first is judged against the targets "
        "(default auto,int8,fp32; auto = what `fewshot serve` picks on this CPU)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where both servers run the model: cpu (default) | cuda | cuda:N; on CUDA, "
        "auto means bf16 and the baseline's pipeline runs there too",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: tiny model, short prompts, one round"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="where BENCHMARKS.md and docs/bench.png go (default .)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="models, logs, exports, raw results (default: <cache dir>/bench)",
    )
    p.add_argument(
        "--peer-python",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="a peer venv's python, e.g. ov=/path/to/venv/bin/python (repeatable); missing ones are skipped",
    )
    p.add_argument(
        "--llamacpp-wheels",
        type=Path,
        default=None,
        metavar="DIR",
        help="prebuilt llama-cpp-python wheels (DIR/avx2, DIR/avx512): the build this CPU runs "
        "is installed into a venv under --work and benchmarked as the llamacpp peer",
    )
    p.add_argument(
        "--peers",
        type=_csv,
        default=DEFAULT_BACKENDS,
        help=f"peer backends to try (default {','.join(DEFAULT_BACKENDS)}; also: ov)",
    )
    p.add_argument(
        "--prepare",
        action="store_true",
        help="only build the model directories and peer exports (run once before timing)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random GPT-Neo weights")
    p.add_argument(
        "--no-profile", action="store_true", help="skip the torch.profiler table of our decode"
    )
    curves = p.add_argument_group(
        "cost curves",
        "tokens/s against concurrent clients, time to first token against prompt length",
    )
    curves.add_argument(
        "--no-curves", action="store_true", help="skip both curves (about 4 minutes at 125M)"
    )
    curves.add_argument(
        "--curve-concurrency",
        type=_counts,
        default=None,
        metavar="LIST",
        help="concurrent clients, our server (default 1,2,4,8,16,32,64; --quick 1,4)",
    )
    curves.add_argument(
        "--curve-baseline-concurrency",
        type=_counts,
        default=None,
        metavar="LIST",
        help="concurrent clients, the baseline, which serves one request at a time "
        "(default 1,2,4,8; --quick 1,4)",
    )
    curves.add_argument(
        "--curve-lengths",
        type=_counts,
        default=None,
        metavar="LIST",
        help="prompt lengths in tokens, each capped at the model's positions - 1 "
        "(default 128,256,512,1024,2048; --quick 64,256)",
    )
    curves.add_argument(
        "--curve-rounds",
        type=int,
        default=1,
        help="rounds of both curves, medians reported (default 1)",
    )
    p.add_argument(
        "--render",
        type=Path,
        metavar="RAW_JSON",
        help="only rewrite BENCHMARKS.md and the plot in --out from a run's raw results",
    )
    return p


def config_from_args(
    args: argparse.Namespace, models: list[str], work: Path, pythons: dict[str, Path]
) -> BenchConfig:
    """The run's configuration from the parsed flags (models, work dir and peers resolved)."""
    common: dict[str, object] = {
        "models": models,
        "rounds": args.rounds or (1 if args.quick else 3),
        "threads": args.threads or available_cores(),
        "dtypes": args.dtype,
        "out": args.out.resolve(),
        "work": work,
        "peer_pythons": pythons,
        "peer_backends": args.peers,
        "seed": args.seed,
        "device": args.device,
        "profile": not args.no_profile,
        "curves": not args.no_curves,
        "curve_rounds": max(1, args.curve_rounds),
        "command": "fewshot bench "
        + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }
    chosen = {
        "curve_concurrency": args.curve_concurrency,
        "curve_baseline_concurrency": args.curve_baseline_concurrency,
        "curve_lengths": args.curve_lengths,
    }
    common.update({k: v for k, v in chosen.items() if v is not None})
    make = BenchConfig.quick_sizes if args.quick else BenchConfig
    return make(**common)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    from fewshot.bench.runner import prepare
    from fewshot.bench.runner import run as run_bench

    if args.render:
        from fewshot.bench import report

        for path in report.write(json.loads(args.render.read_text()), args.out.resolve()):
            print(path)
        return 0

    models = args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)
    unknown = [m for m in models if m not in KNOWN_MODELS]
    bad_dtypes = [d for d in args.dtype if d not in DTYPES]
    on_cuda = args.device.startswith("cuda")
    if unknown or bad_dtypes or not (on_cuda or args.device == "cpu"):
        print(
            f"unknown model(s) {unknown}, dtype(s) {bad_dtypes} or device {args.device!r}",
            file=sys.stderr,
        )
        return 2
    from fewshot.models.loading import resolve_dtype

    args.dtype = list(dict.fromkeys(resolve_dtype(d, args.device) for d in args.dtype))
    if on_cuda:
        import torch

        if "int8" in args.dtype:
            print("int8 weights run on the CPU only; use --dtype auto,bf16,fp32", file=sys.stderr)
            return 2
        if not torch.cuda.is_available():
            print(f"device {args.device!r}: torch sees no CUDA device", file=sys.stderr)
            return 2
    try:
        pythons = parse_peer_python(args.peer_python)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    work = (args.work or Settings().cache_dir / "bench").resolve()
    if args.llamacpp_wheels and "llamacpp" not in pythons:
        from fewshot.bench.peer_setup import ensure_llamacpp_venv

        pythons["llamacpp"] = ensure_llamacpp_venv(args.llamacpp_wheels, work / "peers")
    cfg = config_from_args(args, models, work, pythons)
    if args.prepare:
        prepare(cfg)
        return 0
    results = run_bench(cfg)
    failed = [n for n, m in results["models"].items() if "error" in m]
    return 1 if failed else 0
