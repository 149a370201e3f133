"""`fewshot eval`: few-shot accuracy vs k on the built-in suite and two real labelled sets.

    fewshot eval --model gemma-3-270m --k 0,1,2,4 --seeds 3 --limit 20 --out results/eval
    fewshot eval --url http://127.0.0.1:8000 --model gemma-3-270m   # against a server

Writes results.json, results.md and accuracy_vs_k.png into --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from fewshot.settings import DEFAULT_MODEL, available_cores


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_parser(sub: Any, name: str) -> argparse.ArgumentParser:
    from fewshot.toolkit.datasets import task_names
    from fewshot.toolkit.evaluate import METHODS

    p = sub.add_parser(
        name,
        help="evaluate few-shot accuracy vs k",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="MODEL",
        help=f"model to evaluate (repeatable; default {DEFAULT_MODEL})",
    )
    p.add_argument("--url", help="evaluate through a server speaking the HF Inference API format")
    p.add_argument("--token", help="bearer token for --url")
    p.add_argument(
        "--tasks",
        default=",".join(task_names()),
        help=f"comma-separated tasks (default: all of {', '.join(task_names())})",
    )
    p.add_argument(
        "--k", type=_ints, default=[0, 1, 2, 4, 8], help="numbers of examples (default 0,1,2,4,8)"
    )
    p.add_argument(
        "--seeds", default="3", help="number of seeds N (0..N-1) or a comma list (default 3)"
    )
    p.add_argument("--limit", type=int, default=20, help="test items per task (default 20)")
    p.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}"
    )
    p.add_argument(
        "--concurrency", type=int, default=8, help="queries in flight at once (default 8)"
    )
    p.add_argument("--out", type=Path, default=Path("results/eval"), help="output directory")
    p.add_argument("--threads", type=int, default=None, help="torch threads for a local model")
    p.add_argument("--dtype", default="auto", help="weights dtype for a local model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _seeds(text: str) -> list[int]:
    values = _ints(text)
    return list(range(values[0])) if len(values) == 1 and "," not in text else values


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fewshot.toolkit.datasets import load_task
    from fewshot.toolkit.evaluate import EvalConfig, Evaluator, count_units, results_document
    from fewshot.toolkit.plots import plot_accuracy
    from fewshot.toolkit.report import markdown_report

    models = args.models or [DEFAULT_MODEL]
    try:
        config = EvalConfig(
            ks=sorted(set(args.k)),
            seeds=_seeds(args.seeds),
            limit=args.limit,
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        )
        tasks = [load_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    except (ValueError, KeyError, ModuleNotFoundError) as exc:
        print(f"fewshot eval: {exc}", file=sys.stderr)
        return 2
    prompting = any(m in config.methods for m in ("generate", "rank"))
    started = time.perf_counter()
    with tqdm(
        total=count_units(tasks, config, len(models) if prompting else 0),
        disable=args.no_progress,
        unit="q",
        dynamic_ncols=True,
    ) as bar:
        ev = Evaluator(tasks, config, progress=bar.update, concurrency=args.concurrency)
        runs, backends = [], []
        if prompting:
            for model in models:
                backend = _backend(model, args)
                bar.set_description(f"{backend.name}")
                backends.append(backend.describe())
                try:
                    runs += ev.run_model(backend)
                finally:
                    close = getattr(getattr(backend, "llm", None), "close", None)
                    if close:
                        close()
        bar.set_description("embedding classifier")
        runs += ev.run_classifier()
    meta = {
        "models": [b["model"] for b in backends] or models,
        "backends": backends,
        "tasks": [
            {
                "name": t.name,
                "title": t.title,
                "source": t.source,
                "items": len(t.items),
                "test_items": len(ev.splits[t.name][0]),
                "labels": t.labels,
            }
            for t in tasks
        ],
        "config": {
            "ks": config.ks,
            "seeds": config.seeds,
            "limit": config.limit,
            "methods": config.methods,
            "split_seed": config.split_seed,
            "concurrency": args.concurrency,
        },
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "machine": f"{platform.machine()}, {available_cores()} cores available",
        "notes": list(dict.fromkeys(ev.notes)),
    }
    doc = results_document(runs, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    plot = plot_accuracy(doc["summary"], config.ks, args.out / "accuracy_vs_k.png")
    (args.out / "results.md").write_text(markdown_report(doc, plot.name), encoding="utf-8")
    print(markdown_report(doc))
    print(f"wrote {args.out}/results.json, results.md, {plot.name}")
    return 0


def _backend(model: str, args: argparse.Namespace) -> Any:
    from fewshot.toolkit.backends import LocalBackend, RemoteBackend

    if args.url:
        from fewshot.toolkit.client import Client

        return RemoteBackend(Client(args.url, token=args.token, model=model))
    from fewshot.engine.llm import LLM

    return LocalBackend(LLM.load(model, dtype=args.dtype, threads=args.threads))
