"""Markdown report of an evaluation: accuracy with 95% intervals per k, the comparisons the
evaluation is for (similar vs random examples, calibrated vs not), and the cost per query."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

_ORDER = {"generate": 0, "rank": 1, "classifier": 2}


def _cell(row: dict[str, Any]) -> str:
    return f"{row['accuracy']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def _variant(row: dict[str, Any]) -> str:
    return row["method"] + (" + calibration" if row["calibrated"] else "")


def accuracy_table(results: Sequence[dict[str, Any]]) -> str:
    """One line per (task, method, calibration, selection, model), one column per k."""
    ks = sorted({r["k"] for r in results})
    cells: dict[tuple[str, int, str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        key = (r["task"], _ORDER.get(r["method"], 9), _variant(r), r["select"], r["model"])
        cells[key][r["k"]] = r
    head = "| task | method | examples | model | n | " + " | ".join(f"k={k}" for k in ks) + " |"
    lines = [head, "|---|---|---|---|---|" + "---|" * len(ks)]
    for key in sorted(cells):
        task, _, variant, select, model = key
        row = cells[key]
        n = max(r["n"] for r in row.values())
        values = " | ".join(_cell(row[k]) if k in row else "–" for k in ks)
        lines.append(f"| {task} | {variant} | {select} | {model} | {n} | {values} |")
    return "\n".join(lines)


def _verdict(a: dict[str, Any], b: dict[str, Any], better: str, worse: str) -> str:
    diff = a["accuracy"] - b["accuracy"]
    if a["ci_low"] > b["ci_high"]:
        return f"{better} (+{diff:.2f}, intervals apart)"
    if b["ci_low"] > a["ci_high"]:
        return f"{worse} ({diff:+.2f}, intervals apart)"
    return f"no clear difference ({diff:+.2f}, intervals overlap)"


def comparisons(results: Sequence[dict[str, Any]]) -> list[str]:
    """Per task and k: similar vs random examples, and calibrated vs uncalibrated rank (k = 0,
    which is the same under every selection, once)."""
    by = {
        (r["model"], r["task"], r["method"], r["k"], r["select"], r["calibrated"]): r
        for r in results
    }
    first = min((r["select"] for r in results), default="")
    lines = []
    for (model, task, method, k, select, cal), r in sorted(by.items()):
        if k == 0 and select != first:
            continue
        if select == "similar" and not cal and k > 0:
            other = by.get((model, task, method, k, "random", False))
            if other:
                verdict = _verdict(r, other, "similar better", "similar worse")
                lines.append(f"- {task}, {method}, k={k}: similar vs random: {verdict}")
        if cal:
            other = by.get((model, task, method, k, select, False))
            if other:
                verdict = _verdict(r, other, "calibration helps", "calibration hurts")
                where = f", {select}" if k else ""
                lines.append(f"- {task}, rank, k={k}{where}: calibration: {verdict}")
    return sorted(lines)  # grouped by task


def cost_table(results: Sequence[dict[str, Any]]) -> str:
    """Mean milliseconds per query per (model, method, task), over k and selections."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in results:
        acc[(r["model"], _variant(r), r["task"])].append(r["ms_per_query"])
    lines = ["| model | method | task | ms / query |", "|---|---|---|---|"]
    for (model, method, task), values in sorted(acc.items()):
        lines.append(f"| {model} | {method} | {task} | {sum(values) / len(values):.1f} |")
    return "\n".join(lines)


def markdown_report(
    results: Sequence[dict[str, Any]], meta: dict[str, Any], plot_name: str | None = None
) -> str:
    cfg = meta["config"]
    parts = [
        "# Few-shot evaluation",
        "",
        f"- models: {', '.join(meta['models'])}",
        f"- tasks: {', '.join(t['name'] + ' (' + t['source'] + ')' for t in meta['tasks'])}",
        f"- k: {cfg['ks']}; seeds: {cfg['seeds']}; selection: {', '.join(cfg['selects'])}; "
        f"calibration: {'yes' if cfg['calibrate'] else 'no'}; queries per task: at most "
        f"{cfg['limit']}",
        f"- date: {meta['date']}; wall time: {meta['seconds']:.0f} s; machine: {meta['machine']}",
        f"- command: `{meta.get('command', 'fewshot eval')}`",
        "",
        "Accuracy with its 95% Wilson interval; `n` counts predictions, pooled over seeds "
        "(`similar` and k = 0 do not depend on the seed and run once). Examples are drawn "
        "leave-one-out from the task's other rows. `generate`: greedy generation, exact match "
        "after normalisation; `rank`: the most likely label; `+ calibration`: contextual "
        "calibration with content-free inputs; `classifier`: all-MiniLM-L6-v2 embeddings + "
        "logistic regression trained on the same k examples.",
        "",
        accuracy_table(results),
    ]
    found = comparisons(results)
    if found:
        parts += ["", "## Similar vs random examples, calibration", ""] + found
    parts += ["", "## Cost per query (ms, this machine)", "", cost_table(results)]
    if plot_name:
        parts += ["", f"![accuracy vs k]({plot_name})"]
    if meta.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(parts) + "\n"
