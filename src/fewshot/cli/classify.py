"""`fewshot classify`: train and use few-shot task classifiers (embeddings + logistic regression).

    fewshot classify train reviews --data reviews.csv          # columns text,label (or .jsonl/.json/.yaml)
    fewshot classify train news --from-task bbc_news --n 40    # examples from an evaluation task
    fewshot classify predict reviews "Great food!" "Cold soup."
    fewshot classify list
    fewshot classify delete reviews

Tasks live in --tasks-dir (default: <cache dir>/tasks, the server's default too); with --url the
same commands go to a server's /tasks routes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def add_parser(sub: Any, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help="train/predict few-shot task classifiers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks-dir", type=Path, help="where tasks are stored (local mode)")
    p.add_argument("--url", help="use a server's /tasks routes instead of local files")
    p.add_argument("--token", help="bearer token for --url")
    actions = p.add_subparsers(dest="action", required=True)
    t = actions.add_parser("train", help="train (or replace) a task")
    t.add_argument("name")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="CSV (text,label), JSONL, JSON or YAML list")
    src.add_argument("--from-task", help="take labelled examples from an evaluation task")
    t.add_argument("--n", type=int, default=32, help="examples taken with --from-task (balanced)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--c", type=float, default=10.0, help="inverse regularisation strength")
    t.add_argument("--overwrite", action="store_true", help="replace an existing task")
    pr = actions.add_parser("predict", help="label texts")
    pr.add_argument("name")
    pr.add_argument("texts", nargs="*", help="texts (default: one per line on stdin)")
    actions.add_parser("list", help="list tasks")
    d = actions.add_parser("delete", help="delete a task")
    d.add_argument("name")
    return p


def read_labelled(path: Path) -> list[dict[str, str]]:
    """Rows with text and label from a CSV, JSONL, JSON or YAML file."""
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".csv":
        rows: Any = list(csv.DictReader(text.splitlines()))
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif suffix == ".json":
        rows = json.loads(text)
    else:
        rows = yaml.safe_load(text)
    if isinstance(rows, dict):
        rows = rows.get("examples", [])
    return [
        {"text": str(r.get("text", r.get("input"))), "label": str(r.get("label", r.get("output")))}
        for r in rows
    ]


def _from_task(name: str, n: int, seed: int) -> list[dict[str, str]]:
    import random

    from fewshot.toolkit.datasets import load_task
    from fewshot.toolkit.selection import balanced_order

    task = load_task(name)
    labels = [i.output if task.labels else None for i in task.items]
    order = balanced_order(labels, random.Random(seed))[:n]
    return [{"text": task.items[i].input, "label": task.items[i].output} for i in order]


def run(args: argparse.Namespace) -> int:
    from fewshot.toolkit.classifier import TaskError
    from fewshot.toolkit.client import FewShotAPIError

    try:
        out = _run_remote(args) if args.url else _run_local(args)
    except (TaskError, FewShotAPIError, OSError, ValueError, KeyError) as exc:
        print(f"fewshot classify: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _examples(args: argparse.Namespace) -> list[dict[str, str]]:
    return read_labelled(args.data) if args.data else _from_task(args.from_task, args.n, args.seed)


def _texts(args: argparse.Namespace) -> list[str]:
    return args.texts or [ln.strip() for ln in sys.stdin if ln.strip()]


def _run_local(args: argparse.Namespace) -> Any:
    from fewshot.settings import Settings
    from fewshot.toolkit import classifier as C

    store = C.TaskStore(args.tasks_dir or Settings().cache_dir / "tasks")
    if args.action == "list":
        return store.list()
    if args.action == "delete":
        if not store.delete(args.name):
            raise C.TaskError(f"no task named {args.name!r}")
        return {"deleted": args.name}
    embedder = C.Embedder()
    if args.action == "train":
        if store.exists(args.name) and not args.overwrite:
            raise C.TaskError(f"task {args.name!r} exists; pass --overwrite to replace it")
        texts, labels = C.read_examples(_examples(args))
        clf = C.train_task(args.name, texts, labels, embedder, c=args.c)
        store.save(clf, args.name)
        return C.summary(clf)
    texts = _texts(args)
    preds = C.predict(store.load(args.name), texts, embedder)
    return [
        {"text": t, "label": p.label, "score": p.score, "probabilities": p.probabilities}
        for t, p in zip(texts, preds, strict=True)
    ]


def _run_remote(args: argparse.Namespace) -> Any:
    from fewshot.toolkit.client import Client

    with Client(args.url, token=args.token) as client:
        if args.action == "list":
            return client.list_tasks()
        if args.action == "delete":
            return client.delete_task(args.name)
        if args.action == "train":
            return client.create_task(
                args.name, _examples(args), overwrite=args.overwrite, c=args.c
            )
        return client.predict_task(args.name, _texts(args))
