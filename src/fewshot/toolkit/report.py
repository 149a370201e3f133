"""Markdown report of an evaluation: accuracy vs k tables and the cost per query."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any


def _fmt(row: dict[str, Any]) -> str:
    if row["seeds"] > 1:
        return f"{row['accuracy']:.2f} ± {row['std']:.2f}"
    return f"{row['accuracy']:.2f}"


def accuracy_table(summary: Sequence[dict[str, Any]], ks: Sequence[int]) -> str:
    """One row per (model, task, method), one column per k: mean ± std over seeds."""
    cells: dict[tuple[str, str, str], dict[int, str]] = defaultdict(dict)
    n_items: dict[tuple[str, str, str], int] = {}
    for row in summary:
        key = (row["model"], row["task"], row["method"])
        cells[key][row["k"]] = _fmt(row)
        n_items[key] = row["n"]
    head = "| model | task | method | n | " + " | ".join(f"k={k}" for k in ks) + " |"
    sep = "|---|---|---|---|" + "---|" * len(ks)
    lines = [head, sep]
    order = {"generate": 0, "rank": 1, "classifier": 2}
    for key in sorted(cells, key=lambda x: (x[1], order.get(x[2], 9), x[0])):
        model, task, method = key
        values = " | ".join(cells[key].get(k, "–") for k in ks)
        lines.append(f"| {model} | {task} | {method} | {n_items[key]} | {values} |")
    return "\n".join(lines)


def cost_table(summary: Sequence[dict[str, Any]]) -> str:
    """Mean milliseconds per query, per (model, method, task), over all k and seeds."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in summary:
        acc[(row["model"], row["method"], row["task"])].append(row["ms_per_query"])
    lines = ["| model | method | task | ms / query |", "|---|---|---|---|"]
    for (model, method, task), values in sorted(acc.items()):
        lines.append(f"| {model} | {method} | {task} | {sum(values) / len(values):.1f} |")
    return "\n".join(lines)


def markdown_report(document: dict[str, Any], plot_name: str | None = None) -> str:
    meta = document["meta"]
    summary = document["summary"]
    ks = meta["config"]["ks"]
    parts = [
        "# Few-shot evaluation",
        "",
        f"- models: {', '.join(meta['models'])}",
        f"- tasks: {', '.join(t['name'] + ' (' + t['source'] + ')' for t in meta['tasks'])}",
        f"- k: {ks}; seeds: {meta['config']['seeds']}; test items per task: "
        f"at most {meta['config']['limit']}",
        f"- date: {meta['date']}; wall time: {meta['seconds']:.0f} s; machine: {meta['machine']}",
        "",
        "Accuracy (mean ± std over seeds; k = 0 has no examples and runs once). `generate`: greedy "
        "generation, exact match after normalisation; `rank`: the most likely label; "
        "`classifier`: all-MiniLM-L6-v2 embeddings + logistic regression trained on the same k "
        "examples.",
        "",
        accuracy_table(summary, ks),
        "",
        "## Cost per query (ms, this machine)",
        "",
        cost_table(summary),
    ]
    if plot_name:
        parts += ["", f"![accuracy vs k]({plot_name})"]
    if meta.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(parts) + "\n"
