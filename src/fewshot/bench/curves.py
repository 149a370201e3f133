"""The two cost curves, run against any server that speaks the TGI wire format: generated
tokens/s against the number of concurrent clients ("scaling"), and time to first token against
the prompt length ("prompt_length").

Every point is bounded in requests and in time: a point that alone takes longer than the time
cap ends its curve, and the larger points are reported as skipped. Every prompt is fresh (sent
to that server once), so a prefix cache never serves one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fewshot.bench.config import BenchConfig, SidePlan
from fewshot.bench.http_client import run_closed_loop, tgi_request
from fewshot.bench.prompts import CountTokens, sized_prompts, unrelated_prompts
from fewshot.bench.stats import median, percentile
from fewshot.bench.workloads import Target


def scaling_requests(level: int, requests_min: int) -> int:
    """Requests per round of the scaling point with `level` concurrent clients."""
    return max(level, requests_min)


def scaling(
    target: Target,
    prompts: Sequence[str],
    levels: Sequence[int],
    requests_min: int,
    new_tokens: int,
    rounds: int,
    time_cap_s: float,
) -> dict:
    """Generated tokens/s over the wall time with C clients sending unrelated prompts back to
    back (`scaling_requests(C)` per round, `new_tokens` each, no stop string), for each C in
    `levels`, smallest first. A point whose round outlasts `time_cap_s` even with one request per
    client ends the curve. Needs 1 + rounds * sum(scaling_requests(C)) prompts."""
    send = partial(tgi_request, target.base_url, max_new_tokens=new_tokens)
    send(prompts[0])  # warm-up
    cursor = 1

    def measure(c: int) -> tuple[dict, float]:
        nonlocal cursor
        planned = scaling_requests(c, requests_min)
        rates: list[float] = []
        walls: list[float] = []
        done: list[int] = []
        latencies: list[float] = []
        for _ in range(rounds):
            batch = list(prompts[cursor : cursor + planned])
            cursor += planned
            replies, wall = run_closed_loop(send, batch, c, time_cap_s)
            tokens = sum(
                rep.generated_tokens if rep.generated_tokens is not None else new_tokens
                for rep in replies
            )
            rates.append(tokens / wall)
            walls.append(wall)
            done.append(len(replies))
            latencies.extend(rep.latency for rep in replies)
        point = {
            "tokens_per_s": median(rates),
            "requests": done,
            "planned_requests": planned,
            "wall_s": walls,
            "p50_s": percentile(latencies, 50),
            "rounds": rates,
        }
        return point, max(walls)

    points, skipped = _until_capped(levels, measure, time_cap_s, "client")
    return {
        "levels": points,
        "requested": sorted(levels),
        "skipped": skipped,
        "new_tokens": new_tokens,
        "time_cap_s": time_cap_s,
    }


def prompt_length(
    target: Target, by_length: dict[int, list[str]], rounds: int, time_cap_s: float
) -> dict:
    """Time to first token (latency of a 1-token request on a fresh prompt) for each prompt
    length, shortest first: one warm-up request of that length, then `rounds` timed ones. A
    length whose requests together take longer than `time_cap_s` ends the curve. Needs
    rounds + 1 prompts per length."""
    send = partial(tgi_request, target.base_url, max_new_tokens=1)

    def measure(length: int) -> tuple[dict, float]:
        prompts = by_length[length]
        warm = send(prompts[0])
        ttft = [send(p).latency for p in prompts[1 : 1 + rounds]]
        return {"ttft_s": median(ttft), "rounds": ttft}, warm.latency + sum(ttft)

    points, skipped = _until_capped(by_length, measure, time_cap_s, "token")
    return {
        "lengths": points,
        "requested": sorted(by_length),
        "skipped": skipped,
        "time_cap_s": time_cap_s,
    }


def _until_capped(
    keys: Iterable[int],
    measure: Callable[[int], tuple[dict, float]],
    time_cap_s: float,
    unit: str,
) -> tuple[dict[str, dict], dict[str, str]]:
    """Measure each key, smallest first, until one takes longer than `time_cap_s` (measure
    returns the point and the seconds it took); the larger keys are skipped, with the reason."""
    points: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    reason = ""
    for key in sorted(keys):
        if reason:
            skipped[str(key)] = reason
            continue
        points[str(key)], spent = measure(key)
        if spent > time_cap_s:
            reason = f"the {key}-{unit} point took {spent:.0f} s > {time_cap_s:.0f} s"
    return points, skipped


def max_positions(hf_dir: Path) -> int | None:
    """The model's position limit from its transformers config, where it says one."""
    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings") or config.get("n_positions")
    return int(value) if value else None


def fit_lengths(requested: Sequence[int], positions: int | None) -> tuple[list[int], list[str]]:
    """The prompt lengths to measure: each capped so that it and the 1 new token fit in
    `positions`; notes say which were capped."""
    if not positions:
        return sorted(set(requested)), []
    limit = positions - 1
    lengths = sorted({min(n, limit) for n in requested})
    capped = sorted(n for n in set(requested) if n > limit)
    notes = []
    if capped:
        notes.append(
            f"prompt lengths {', '.join(map(str, capped))} measured as {limit} tokens "
            f"(the model's {positions} positions hold the prompt and the 1 new token)"
        )
    return lengths, notes


@dataclass
class CurvePrompts:
    """The prompts of both curves for one model (the same for every server)."""

    scaling: list[str] = field(default_factory=list)
    by_length: dict[int, list[str]] = field(default_factory=dict)
    tokens: dict[str, object] = field(default_factory=dict)  # measured lengths, for the report


def build_curve_prompts(
    count_tokens: CountTokens,
    scaling_count: int,
    unrelated_tokens: int,
    lengths: Sequence[int],
    per_length: int,
    skip_unrelated: int,
) -> CurvePrompts:
    """`scaling_count` unrelated prompts (after the first `skip_unrelated` of the throughput
    workload's list, so none repeats one sent before) and `per_length` prompts per length."""
    scaling_prompts: list[str] = []
    if scaling_count:
        made = unrelated_prompts(count_tokens, skip_unrelated + scaling_count, unrelated_tokens)
        scaling_prompts = made[skip_unrelated:]
    by_length = {n: sized_prompts(count_tokens, per_length, n) for n in lengths}
    sample = scaling_prompts[:20]
    tokens: dict[str, object] = {
        "scaling_prompt": round(sum(map(count_tokens, sample)) / len(sample)) if sample else 0,
        "length_prompts": {str(n): [count_tokens(p) for p in ps] for n, ps in by_length.items()},
    }
    return CurvePrompts(scaling_prompts, by_length, tokens)


def run_curves(
    target: Target,
    label: str,
    workloads: tuple[str, ...],
    prompts: CurvePrompts,
    levels: tuple[int, ...],
    cfg: BenchConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The cost curves of one server; a curve that fails keeps its error to itself."""
    res: dict[str, Any] = {}
    if "scaling" in workloads and levels and prompts.scaling:
        log(f"  {label}: tokens/s against {list(levels)} concurrent clients")
        try:
            res["scaling"] = scaling(
                target, prompts.scaling, levels, cfg.curve_requests_min, cfg.curve_new_tokens,
                cfg.curve_rounds, cfg.curve_point_s,
            )  # fmt: skip
        except Exception as exc:  # the other curve and workloads keep their results
            res["scaling"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {label}: scaling FAILED: {res['scaling']['error']}")
    if "prompt_length" in workloads and prompts.by_length:
        log(f"  {label}: time to first token against {list(prompts.by_length)} prompt tokens")
        try:
            res["prompt_length"] = prompt_length(
                target, prompts.by_length, cfg.curve_rounds, cfg.curve_point_s
            )
        except Exception as exc:
            res["prompt_length"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {label}: prompt length FAILED: {res['prompt_length']['error']}")
    return res


def plan_curve_prompts(
    cfg: BenchConfig,
    sides: list[tuple[SidePlan, tuple[int, ...]]],
    count: CountTokens,
    hf_dir: Path,
    skip: int,
) -> tuple[CurvePrompts | None, dict[str, Any]]:
    """The curves' prompts for the sides that run them (None when none does), and what the
    report says about them."""
    runs = [(cfg.workloads(side), levels) for side, levels in sides]
    scaling_sums = [
        sum(scaling_requests(c, cfg.curve_requests_min) for c in levels)
        for workloads, levels in runs
        if "scaling" in workloads
    ]
    any_length = any("prompt_length" in workloads for workloads, _ in runs)
    if not scaling_sums and not any_length:
        return None, {}
    positions = max_positions(hf_dir)
    lengths, notes = fit_lengths(cfg.curve_lengths, positions) if any_length else ([], [])
    scaling_count = 1 + cfg.curve_rounds * max(scaling_sums) if scaling_sums else 0
    built = build_curve_prompts(
        count, scaling_count, cfg.unrelated_tokens, lengths, cfg.curve_rounds + 1, skip
    )
    info = {"max_positions": positions, "lengths": lengths, "notes": notes, **built.tokens}
    return built, info
