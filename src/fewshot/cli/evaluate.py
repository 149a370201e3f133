"""`fewshot eval`: few-shot accuracy with 95% intervals vs k, on your data or the built-in tasks.

    fewshot eval --data reviews.csv --task-description "Classify the sentiment." \\
        --select random,similar --calibrate --k 0,4,8
    fewshot eval --tasks reviews,bbc_news --limit 100 --methods rank,classifier
    fewshot eval --url http://127.0.0.1:8000 --model gemma-3-270m --data rows.jsonl

`--data` reads a CSV or JSONL file with `text` and `label` columns (`--text-field`,
`--label-field`); without `--data` or `--tasks`, the built-in tasks run. Writes results.json
(one row per model, task, method, k, selection and calibration), run.json (settings and every
prediction), results.md and accuracy_vs_k.png into --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
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


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _unescape(text: str) -> str:
    """`--format 'Q: {input}\\nA: {output}'` as typed in a shell: \\n and \\t are escapes."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def add_parser(sub: Any, name: str) -> argparse.ArgumentParser:
    from fewshot.toolkit.datasets import task_names
    from fewshot.toolkit.evaluate import METHODS
    from fewshot.toolkit.prompts import DEFAULT_FORMAT
    from fewshot.toolkit.selection import SELECTS

    p = sub.add_parser(
        name,
        help="evaluate few-shot accuracy (with intervals) vs k",
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
    data = p.add_argument_group("your data")
    data.add_argument("--data", type=Path, help="a CSV or JSONL file of labelled rows")
    data.add_argument("--text-field", default="text", help="column with the input (text)")
    data.add_argument("--label-field", default="label", help="column with the answer (label)")
    data.add_argument("--task-description", default="", help="the line that opens every prompt")
    data.add_argument(
        "--format",
        type=_unescape,
        default=DEFAULT_FORMAT,
        help="example template with {input} and a final {output} (default %(default)r)",
    )
    p.add_argument(
        "--tasks",
        type=_names,
        default=None,
        help=f"comma-separated built-in tasks (default without --data: {', '.join(task_names())})",
    )
    p.add_argument(
        "--k", type=_ints, default=[0, 1, 2, 4, 8], help="numbers of examples (default 0,1,2,4,8)"
    )
    p.add_argument(
        "--select",
        type=_names,
        default=["random"],
        help=f"example selection, comma-separated, of {', '.join(SELECTS)} (default random)",
    )
    p.add_argument(
        "--calibrate", action="store_true", help="add contextually calibrated rank results"
    )
    p.add_argument(
        "--seeds", default="3", help="number of seeds N (0..N-1) or a comma list (default 3)"
    )
    p.add_argument(
        "--limit", type=int, default=200, help="queries per task (default: all rows up to 200)"
    )
    p.add_argument(
        "--pool-limit",
        type=int,
        default=2000,
        help="rows per task examples are drawn from (default 2000; large sets are sampled)",
    )
    p.add_argument("--methods", type=_names, default=list(METHODS), help=f"of {', '.join(METHODS)}")
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


def _tasks(args: argparse.Namespace) -> list[Any]:
    from fewshot.toolkit.datasets import load_file, load_task, task_names

    tasks = []
    if args.data is not None:
        tasks.append(
            load_file(
                args.data,
                text_field=args.text_field,
                label_field=args.label_field,
                description=args.task_description,
                format=args.format,
            )
        )
    names = args.tasks if args.tasks is not None else ([] if tasks else task_names())
    return tasks + [load_task(n) for n in names]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fewshot.toolkit.evaluate import EvalConfig, Evaluator, count_units
    from fewshot.toolkit.plots import plot_accuracy
    from fewshot.toolkit.report import markdown_report

    models = args.models or [DEFAULT_MODEL]
    try:
        config = EvalConfig(
            ks=sorted(set(args.k)),
            seeds=_seeds(args.seeds),
            limit=args.limit,
            methods=args.methods,
            selects=args.select,
            calibrate=args.calibrate,
            pool_limit=args.pool_limit,
            concurrency=args.concurrency,
        )
        tasks = _tasks(args)
    except (ValueError, KeyError, OSError, ModuleNotFoundError) as exc:
        print(f"fewshot eval: {exc}", file=sys.stderr)
        return 2
    prompting = any(m in config.methods for m in ("generate", "rank"))
    started = time.perf_counter()
    ev = Evaluator(tasks, config)
    with tqdm(
        total=count_units(ev.data, config, len(models) if prompting else 0),
        disable=args.no_progress,
        unit="q",
        dynamic_ncols=True,
    ) as bar:
        ev.progress = bar.update
        bar.set_description("embedding")
        ev.embed()
        backends = []
        if prompting:
            for model in models:
                backend = _backend(model, args)
                bar.set_description(backend.name)
                backends.append(backend.describe())
                try:
                    ev.run_model(backend)
                finally:
                    close = getattr(getattr(backend, "llm", None), "close", None)
                    if close:
                        close()
        bar.set_description("embedding classifier")
        ev.run_classifier()
    results = ev.results()
    meta = _meta(args, config, ev, backends or [{"model": m} for m in models], started)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_json(args.out / "results.json", {"results": results})
    _write_run(args.out / "run.json", meta, ev.predictions)
    plot = plot_accuracy(results, args.out / "accuracy_vs_k.png")
    report = markdown_report(results, meta, plot.name)
    (args.out / "results.md").write_text(report, encoding="utf-8")
    print(report)
    print(f"wrote {args.out}/results.json, run.json, results.md, {plot.name}")
    return 0


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_run(path: Path, meta: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
    """run.json: the settings, then one prediction per line."""
    rows = ",\n".join(json.dumps(p, ensure_ascii=False) for p in predictions)
    head = json.dumps(meta, indent=1, ensure_ascii=False)
    path.write_text(f'{{"meta": {head},\n"predictions": [\n{rows}\n]}}\n', encoding="utf-8")


def _meta(
    args: argparse.Namespace,
    config: Any,
    ev: Any,
    backends: list[dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    return {
        "models": [b["model"] for b in backends],
        "backends": backends,
        "tasks": [
            {
                "name": d.task.name,
                "title": d.task.title,
                "source": d.task.source,
                "items": len(d.task.items),
                "rows": len(d.rows),
                "queries": len(d.queries),
                "labels": d.task.labels,
            }
            for d in ev.data
        ],
        "config": {
            "ks": config.ks,
            "seeds": config.seeds,
            "limit": config.limit,
            "methods": config.methods,
            "selects": config.selects,
            "calibrate": config.calibrate,
            "pool_limit": config.pool_limit,
            "split_seed": config.split_seed,
            "concurrency": config.concurrency,
        },
        "command": _command(args, config, [d.task.name for d in ev.data]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "machine": f"{platform.machine()}, {available_cores()} cores available",
        "notes": list(dict.fromkeys(ev.notes)),
    }


def _command(args: argparse.Namespace, config: Any, tasks: list[str]) -> str:
    """The command line that reproduces the run (data files by name)."""
    parts = ["fewshot", "eval", *[x for m in args.models or [] for x in ("--model", m)]]
    if args.data is not None:
        parts += ["--data", args.data.name]
        if args.task_description:
            parts += ["--task-description", args.task_description]
    builtin = [t for t in tasks if args.data is None or t != tasks[0]]
    if builtin:
        parts += ["--tasks", ",".join(builtin)]
    parts += ["--k", ",".join(map(str, config.ks)), "--select", ",".join(config.selects)]
    parts += ["--calibrate"] if config.calibrate else []
    seeds = config.seeds
    if seeds == list(range(len(seeds))):
        parts += ["--seeds", str(len(seeds))]  # N means seeds 0..N-1
    else:
        parts += ["--seeds", ",".join(map(str, seeds)) + ("," if len(seeds) == 1 else "")]
    parts += ["--limit", str(config.limit), "--pool-limit", str(config.pool_limit)]
    parts += ["--methods", ",".join(config.methods)]
    return shlex.join(parts)


def _backend(model: str, args: argparse.Namespace) -> Any:
    from fewshot.toolkit.backends import LocalBackend, RemoteBackend

    if args.url:
        from fewshot.toolkit.client import Client

        return RemoteBackend(Client(args.url, token=args.token, model=model))
    from fewshot.engine.llm import LLM

    return LocalBackend(LLM.load(model, dtype=args.dtype, threads=args.threads))
