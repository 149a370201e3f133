"""The cost curves in BENCHMARKS.md: tokens/s against concurrent clients and time to first
token against prompt length, one table each per model, every engine side by side with its ratio
to the baseline, and which points were not measured and why."""

from __future__ import annotations

from typing import Any

from fewshot.bench.cells import ms, num, oneline, table, x
from fewshot.bench.stats import ratio

BEYOND = "†"  # a ratio against the baseline's largest measured concurrency


def _curve(eng: dict[str, Any], name: str) -> dict[str, Any] | None:
    return eng.get(name) if isinstance(eng.get(name), dict) else None


def _engines_with(model: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(k, e) for k, e in model.get("engines", {}).items() if _curve(e, name)]


def _baseline(engines: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]] | None:
    return next(((k, e) for k, e in engines if e.get("kind") == "baseline"), None)


def _points(curve: dict[str, Any] | None, key: str) -> dict[str, dict[str, Any]]:
    return (curve or {}).get(key) or {}


def _not_measured(
    engines: list[tuple[str, dict[str, Any]]], name: str, key: str, all_points: list[int], unit: str
) -> list[str]:
    """One line per engine that has gaps in the curve: points skipped on the time cap, points
    not in its list, or the whole curve failing."""
    lines = []
    for k, eng in engines:
        curve = _curve(eng, name) or {}
        label = eng.get("label", k)
        if "error" in curve:
            lines.append(f"- {label}: failed, `{oneline(curve['error'])}`")
            continue
        skipped = curve.get("skipped") or {}
        for reason in dict.fromkeys(skipped.values()):
            points = [p for p, r in skipped.items() if r == reason]
            lines.append(f"- {label}: skipped at {', '.join(points)} {unit}, as {reason}")
        listed = set(curve.get("requested") or [int(p) for p in _points(curve, key)])
        absent = [str(p) for p in all_points if p not in listed]
        if absent:
            why = (
                " (it serves one request at a time: more clients only queue)"
                if eng.get("kind") == "baseline" and name == "scaling"
                else ""
            )
            lines.append(f"- {label}: not run at {', '.join(absent)} {unit}{why}")
    return lines


def _header(
    first: str,
    engines: list[tuple[str, dict[str, Any]]],
    base: tuple[str, dict[str, Any]] | None,
    value: str,
    against: str,
) -> list[str]:
    """A curve table's header: `first`, then each engine's `value` column, followed by its
    `against`-the-baseline column for every engine but the baseline (when there is one)."""
    header = [first]
    for k, eng in engines:
        header.append(f"{eng.get('label', k)}, {value}")
        if eng.get("kind") != "baseline" and base:
            header.append(against)
    return header


def scaling_table(model: dict[str, Any]) -> list[str]:
    """Generated tokens/s per concurrency (rows) for every engine (columns), with ratios."""
    engines = _engines_with(model, "scaling")
    if not engines:
        return []
    base = _baseline(engines)
    base_points = _points(_curve(base[1], "scaling"), "levels") if base else {}
    base_rate = {int(c): p.get("tokens_per_s") for c, p in base_points.items()}
    base_top = max(base_rate) if base_rate else None
    levels: set[int] = set()
    for _, eng in engines:
        curve = _curve(eng, "scaling") or {}
        levels |= {int(c) for c in _points(curve, "levels")} | {
            int(c) for c in curve.get("skipped") or {}
        }
        levels |= set(curve.get("requested") or [])
    header = _header("concurrent clients", engines, base, "tokens/s", "x baseline")
    rows, capped, beyond = [], False, False
    for c in sorted(levels):
        row = [str(c)]
        for _, eng in engines:
            curve = _curve(eng, "scaling") or {}
            point = _points(curve, "levels").get(str(c))
            rate = point.get("tokens_per_s") if point else None
            cell = (
                num(rate) if point else "skipped" if str(c) in (curve.get("skipped") or {}) else "-"
            )
            if point and min(point.get("requests") or [0]) < point.get("planned_requests", 0):
                cell += "*"
                capped = True
            row.append(cell)
            if eng.get("kind") == "baseline" or not base:
                continue
            if c in base_rate or base_top is None or c < base_top or rate is None:
                row.append(x(ratio(rate, base_rate.get(c))))
            else:
                row.append(x(ratio(rate, base_rate[base_top])) + BEYOND)
                beyond = True
        rows.append(row)
    lines = table(header, rows)
    notes = []
    if beyond:
        notes.append(
            f"{BEYOND} against the baseline at its largest measured concurrency ({base_top} clients)."
        )
    if capped:
        notes.append(
            "* the time cap stopped new requests before all were sent (rate over those sent)."
        )
    gaps = _not_measured(engines, "scaling", "levels", sorted(levels), "clients")
    return lines + ([""] + notes if notes else []) + (["", *gaps] if gaps else [])


def prompt_length_table(model: dict[str, Any]) -> list[str]:
    """Time to first token per prompt length (rows) for every engine (columns), with speedups."""
    engines = _engines_with(model, "prompt_length")
    if not engines:
        return []
    base = _baseline(engines)
    base_points = _points(_curve(base[1], "prompt_length"), "lengths") if base else {}
    lengths: set[int] = set()
    for _, eng in engines:
        curve = _curve(eng, "prompt_length") or {}
        lengths |= {int(n) for n in _points(curve, "lengths")} | set(curve.get("requested") or [])
    header = _header("prompt tokens", engines, base, "TTFT", "speedup")
    rows = []
    for n in sorted(lengths):
        row = [str(n)]
        for _, eng in engines:
            curve = _curve(eng, "prompt_length") or {}
            point = _points(curve, "lengths").get(str(n))
            ttft = point.get("ttft_s") if point else None
            skipped = str(n) in (curve.get("skipped") or {})
            row.append(ms(ttft) if point else "skipped" if skipped else "-")
            if eng.get("kind") != "baseline" and base:
                row.append(x(ratio((base_points.get(str(n)) or {}).get("ttft_s"), ttft)))
        rows.append(row)
    notes = [f"- {note}" for note in (model.get("curves") or {}).get("notes") or []]
    gaps = _not_measured(engines, "prompt_length", "lengths", sorted(lengths), "tokens")
    extra = notes + gaps
    return table(header, rows) + (["", *extra] if extra else [])


def curve_sections(model: dict[str, Any]) -> list[str]:
    """Both curves' sections of one model (nothing where neither ran)."""
    lines: list[str] = []
    scaling = scaling_table(model)
    if scaling:
        lines += ["### Cost against concurrent clients (generated tokens/s)", "", *scaling, ""]
    lengths = prompt_length_table(model)
    if lengths:
        lines += ["### Cost against prompt length (time to first token)", "", *lengths, ""]
    return lines


def _list(values: list[int] | None) -> str:
    return ", ".join(map(str, values or [])) or "-"


def curve_workload_notes(meta: dict[str, Any], first: int) -> list[str]:
    """The curves' entries of the workload list, numbered from `first`."""
    c = meta.get("curves") or {}
    if not c.get("on", False):
        return []
    s = meta.get("sizes") or {}
    return [
        f"{first}. **Concurrent clients**: C clients each send unrelated prompts (~{s.get('unrelated_prompt_tokens')} "
        f"tokens) back to back, {c.get('new_tokens')} new tokens each, no stop string; max(C, {c.get('requests_min')}) "
        f"requests per point, {c.get('rounds')} round(s); generated tokens/s over the wall time. "
        f"C in {_list(c.get('concurrency'))} for our server, {_list(c.get('baseline_concurrency'))} for the baseline. "
        f"No new request starts after {num(c.get('point_s'), 0)} s, and a point that takes longer ends its curve.",
        f"{first + 1}. **Prompt length**: time to first token (a 1-token request) on a fresh prompt of each length "
        f"in {_list(c.get('lengths'))} tokens (capped at the model's positions - 1), after one warm-up request of that length; "
        f"median of {c.get('rounds')} round(s). A length whose requests take longer than "
        f"{num(c.get('point_s'), 0)} s ends the curve.",
    ]
