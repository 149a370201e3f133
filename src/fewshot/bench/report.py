"""BENCHMARKS.md (and, through plot.py, docs/bench.png) from one run's results (medians over
rounds, ratios)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewshot.bench.cells import mb, ms, num, oneline, table, x
from fewshot.bench.plot import plot
from fewshot.bench.report_curves import curve_sections, curve_workload_notes
from fewshot.bench.runtime_probe import describe_stages
from fewshot.bench.stats import ratio
from fewshot.bench.targets import TargetResult, headline, judge

PLOT_NAME = "docs/bench.png"


def _engines(model: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(model.get("engines", {}).items())


def _single_table(model: dict[str, Any]) -> list[str]:
    base = model["engines"].get("baseline", {})
    b_ttft = (base.get("single") or {}).get("ttft_s")
    b_step = (base.get("single") or {}).get("decode_s_per_token")
    rows = []
    for key, eng in _engines(model):
        s = eng.get("single") if eng.get("kind") != "peer" else eng
        if not s or "error" in eng:
            rows.append(
                [
                    eng.get("label", key),
                    "failed: " + oneline(eng.get("error", "not run"), 80),
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        peak = eng.get("peak_rss_single") or eng.get("peak_rss")
        rows.append([
            eng.get("label", key),
            ms(s.get("ttft_s")),
            ms(s.get("decode_s_per_token")),
            ms(s.get("ttft_cached_prefix_s")),
            mb(peak),
            x(ratio(b_ttft, s.get("ttft_s"))),
            x(ratio(b_step, s.get("decode_s_per_token"))),
        ])  # fmt: skip
    header = [
        "engine",
        "time to first token",
        "decode / token",
        "TTFT, cached prefix",
        "peak RSS",
        "TTFT speedup",
        "decode speedup",
    ]
    return table(header, rows)


def _serving_table(model: dict[str, Any]) -> list[str]:
    base_rps = ((model["engines"].get("baseline") or {}).get("serving") or {}).get("requests_per_s")
    rows = []
    for key, eng in _engines(model):
        s = eng.get("serving")
        if not s:
            continue
        peer = eng.get("kind") == "peer"
        rows.append([
            eng.get("label", key) + (f" (in-process, {s.get('mode', 'batches')})" if peer else ""),
            num(s.get("requests_per_s"), 2),
            "-" if peer else ms(s.get("p50_s")),
            "-" if peer else ms(s.get("p99_s")),
            x(ratio(s.get("requests_per_s"), base_rps)),
            str(s.get("requests", "-")),
            "-" if peer else f"{s.get('replies_with_stop', 0)}/{s.get('requests', 0)}",
        ])  # fmt: skip
    if not rows:
        return []
    header = [
        "engine",
        "requests/s",
        "p50 latency",
        "p99 latency",
        "x baseline",
        "requests",
        "stopped at stop string",
    ]
    return table(header, rows)


def _throughput_table(model: dict[str, Any]) -> list[str]:
    base_levels = ((model["engines"].get("baseline") or {}).get("throughput") or {}).get(
        "levels", {}
    )
    rows = []
    for key, eng in _engines(model):
        for level, v in ((eng.get("throughput") or {}).get("levels") or {}).items():
            base = (base_levels.get(level) or {}).get("tokens_per_s")
            rows.append(
                [
                    eng.get("label", key),
                    level,
                    num(v.get("tokens_per_s")),
                    x(ratio(v.get("tokens_per_s"), base)),
                ]
            )
    if not rows:
        return []
    return table(
        ["engine", "concurrent prompts", "generated tokens/s", "x baseline (same concurrency)"],
        rows,
    )


def _targets_section(results: dict[str, Any], judged: list[TargetResult]) -> list[str]:
    name, ours_key = headline(results)
    lines = [
        "## Targets",
        "",
        f"Judged on **{name}** with **{ours_key}**, all numbers from this run.",
        "",
    ]
    status = {True: "met", False: "**missed**", None: "not measured"}
    rows = [[t.name, t.measured, t.goal, status[t.met], t.detail] for t in judged]
    return lines + table(["target", "measured", "goal", "status", "margin"], rows) + [""]


def _per_call(phases: list[dict[str, Any] | None]) -> tuple[dict[str, float], float] | None:
    """Mean seconds per call of each native part over the probes that ran the native layers,
    and rows per call."""
    got = [p for p in phases if p]
    calls = sum(p["calls"] for p in got)
    if not calls:
        return None
    names = got[0]["seconds"]
    per = {n: sum(p["seconds"][n] for p in got) / calls for n in names}
    return per, sum(p["rows"] for p in got) / calls


def _phase_table(probe: dict[str, Any], prof: dict[str, Any]) -> list[str]:
    """Where a batch-1 decode step and a cached-prefix chunk spend their time inside the native
    layers (`native_step.step_phases`), and the rest of each (embedding, final norm, LM head,
    token choice, the engine's Python)."""
    step = _per_call([prof.get("native_phases")])
    chunk = _per_call(probe.get("cached_chunk_phases") or [])
    if step is None or chunk is None:
        return []
    (step_parts, _), (chunk_parts, chunk_rows) = step, chunk
    step_total = prof["forward_s_per_step"]  # one call of the native layers per step
    chunk_total = probe.get("ttft_cached_prefix_s") or sum(chunk_parts.values())
    parts = {n: (step_parts[n], chunk_parts[n]) for n in step_parts}
    parts["outside the layers (embedding, head, token choice, Python)"] = (
        step_total - sum(step_parts.values()),
        chunk_total - sum(chunk_parts.values()),
    )
    rows = [
        [name, ms(a), f"{100 * a / step_total:.0f}%", ms(b), f"{100 * b / chunk_total:.0f}%"]
        for name, (a, b) in parts.items()
    ]
    rows.append(["total", ms(step_total), "100%", ms(chunk_total), "100%"])
    return [
        "Inside the native layers (`fs_run_layers`, timed per part): a batch-1 decode step of "
        "the forward alone above, and the first token of a query after its cached prefix "
        f"({chunk_rows:.0f} new tokens in one chunk; its time to first token in process):",
        "",
        *table(["part", "decode step", "share", "cached-prefix chunk", "share"], rows),
        "",
    ]


def _profile_section(results: dict[str, Any], judged: list[TargetResult]) -> list[str]:
    lines: list[str] = []
    missed = [t for t in judged if t.met is False]
    for name, model in results.get("models", {}).items():
        probe = model.get("probe") or {}
        prof = probe.get("profile")
        if not probe:
            continue
        lines += [f"### {name}, our engine in-process ({probe.get('dtype')})", ""]
        if "error" in probe:
            lines += [f"Probe failed: `{oneline(probe['error'])}`", ""]
            continue
        lines.append(
            f"No HTTP: time to first token {ms(probe.get('ttft_s'))}, decode {ms(probe.get('decode_s_per_token'))}"
            f"/token, time to first token with a cached prefix {ms(probe.get('ttft_cached_prefix_s'))} "
            f"(cached tokens: {probe.get('cached_tokens')}); load {num(probe.get('load_s'))} s."
        )
        served = (model.get("engines", {}).get(f"ours-{probe.get('dtype')}") or {}).get(
            "single"
        ) or {}
        http_step, engine_step = served.get("decode_s_per_token"), probe.get("decode_s_per_token")
        if http_step and engine_step:
            lines.append(
                f"Over HTTP the server's decode/token was {ms(http_step)}: {x(http_step / engine_step)} "
                "the in-process engine's (over HTTP it is the latency difference of two requests on "
                "different cold prompts over the extra tokens, so it also carries the noise of two "
                "cold prefills; in process, one request's own token timestamps)."
            )
        lines.append("")
        if prof and prof.get("top_ops"):
            step = prof.get("forward_s_per_step")
            engine_step = probe.get("decode_s_per_token")
            overhead = ""
            if step and engine_step:
                overhead = f"; the engine's decode/token above is {x(engine_step / step)} of that"
            lines.append(
                f"Model forward alone, batch-1 greedy decode at {prof['context_tokens']} tokens of context: "
                f"{ms(step)} per step ({prof['torch_threads']} threads){overhead}. "
                f"torch.profiler over {prof['steps']} steps ({num(prof['profiled_self_cpu_s'], 2)} s of op "
                "self time: it sees only the torch operations outside the native layers), top ops "
                "by self CPU time:"
            )
            lines.append("")
            rows = [
                [
                    f"`{op['op']}`",
                    str(op["calls"]),
                    num(op["self_cpu_ms"]),
                    f"{100 * op['share']:.0f}%",
                ]
                for op in prof["top_ops"]
            ]
            lines += table(["op", "calls", "self CPU ms", "share"], rows)
            lines.append("")
            lines += _phase_table(probe, prof)
    if not lines:
        return []
    head = ["## Where the time goes", ""]
    if missed:
        head += ["Missed: " + "; ".join(f"{t.name} ({t.detail})" for t in missed) + ".", ""]
    return head + lines


def _machine_section(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    meta = results.get("meta", {})
    bw = results.get("bandwidth_gbps")
    bw_end = meta.get("bandwidth_gbps_end")
    load = m.get("load_avg_1m")
    return [
        "## Machine and settings",
        "",
        f"- CPU: {m.get('cpu_model')}; {m.get('logical_cores')} logical / {m.get('physical_cores')} physical cores, "
        f"{m.get('available_cores')} available to this process; {m.get('memory_gib')} GiB RAM; "
        f"flags: {', '.join(m.get('flags') or []) or 'none of note'}",
        *(
            [
                f"- GPU: {m['gpu']} (`--device {meta.get('device')}`): both servers run the model there"
            ]
            if m.get("gpu")
            else []
        ),
        f"- Threads: **{meta.get('threads')}** for every engine (torch intra-op threads / ORT / OpenVINO / llama.cpp)",
        f"- Memory read bandwidth (torch sum, {meta.get('threads')} threads): {num(bw)} GB/s at the start, {num(bw_end)} GB/s at the end",
        f"- Load average at the start: {num(load, 2) if load is not None else '-'} "
        "(other work on the machine skews absolute numbers; the ratios come from the same run)",
        f"- Server process before any weights (`python -m fewshot.bench.runtime_probe`): "
        f"{mb(results.get('runtime_rss'))} peak RSS{describe_stages(results.get('runtime'))}",
        f"- Rounds: {meta.get('rounds')} per workload (medians reported); ours in {', '.join(meta.get('dtypes') or [])}; "
        f"run took {num((meta.get('wall_s') or 0) / 60)} min; started {meta.get('started')}",
        f"- Python {m.get('python')}, torch {m.get('torch')}",
        "",
    ]


def _workload_notes(results: dict[str, Any]) -> list[str]:
    s = results.get("meta", {}).get("sizes", {})
    return [
        "## Workloads",
        "",
        f"1. **Single request**: a ~{s.get('single_prompt_tokens')}-token few-shot prompt, greedy, "
        f"{s.get('single_new_tokens')} new tokens, over HTTP (TGI `/generate` with `details`, so generated tokens are counted). "
        "Time to first token = latency of a 1-token request on a fresh prompt; decode/token = (latency of the "
        f"{s.get('single_new_tokens')}-token request - time to first token) / (tokens - 1), on another fresh prompt. "
        f"TTFT with a cached prefix: `prefix + query` right after another query on the same ~{s.get('prefix_tokens')}-token prefix. "
        "Peak RSS: the serving process's high-water mark (VmHWM, and psutil samples) after this workload, model load included.",
        f"2. **Few-shot serving**: requests sharing a ~{s.get('prefix_tokens')}-token few-shot prefix with distinct final "
        f"queries, HF route `POST /models/{{id}}`, {s.get('concurrency')} client threads, greedy, max_new_tokens "
        f"{s.get('serving_new_tokens')}, stop at `{s.get('stop')}` requested (both servers get identical requests; the "
        "baseline the first N of the same list). Response cache off (`use_cache: false`).",
        f"3. **Throughput**: C concurrent unrelated prompts (~{s.get('unrelated_prompt_tokens')} tokens, no shared prefix), "
        f"{s.get('throughput_new_tokens')} new tokens each; generated tokens/s over the wall time.",
        *curve_workload_notes(results.get("meta", {}), 4),
        "",
        "Random-weight GPT-Neo models never produce the stop string on purpose, so their generation length is fixed by "
        "max_new_tokens (EOS may still end a sequence early: token counts come from the server's details). "
        "Gemma 3 270M has real weights and does stop at the separator. The baseline is a FastAPI server calling "
        '`pipeline("text-generation")` fp32 per request with transformers\' own `stop_strings`, one call at a time '
        "(concurrent pipeline calls on the same cores only slow each other down); transformers builds "
        "its stop-string tables over the whole vocabulary on every call, part of its per-request cost.",
        "",
    ]


def _agreement_line(agree: dict[str, Any]) -> str:
    if "error" in agree:
        return f"Agreement not measured: `{oneline(agree['error'])}`"
    return (
        f"Top-1 agreement of int8 with fp32: {agree['teacher_forced_top1']:.1%} of "
        f"{agree['positions']} teacher-forced positions over {agree['prompts']} prompts; "
        f"{agree['greedy_top1']:.1%} of {agree['greedy_tokens']} greedy tokens (same position, "
        "same token; a greedy run that diverges once keeps differing after)."
    )


def render(results: dict[str, Any]) -> str:
    """The whole BENCHMARKS.md."""
    judged = judge(results)
    meta = results.get("meta", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `fewshot bench`; do not edit by hand. Reproduce with:",
        "",
        "```",
        meta.get("command") or "fewshot bench",
        "```",
        "",
    ]
    if meta.get("quick"):
        lines += [
            "**Quick smoke run (tiny sizes): these numbers say nothing about performance.**",
            "",
        ]
    lines += _machine_section(results)
    lines += _targets_section(results, judged)
    lines += [f"![benchmark plot]({PLOT_NAME})", ""]
    for name, model in results.get("models", {}).items():
        spec = model.get("model", {})
        lines += [f"## {name}", ""]
        if "error" in model:
            lines += [f"Failed: `{oneline(model['error'])}`", ""]
            continue
        kind = "random weights (seeded)" if spec.get("random_weights") else "real weights"
        toks = model.get("prompt_tokens", {})
        lines += [
            f"{spec.get('n_params', 0) / 1e6:,.0f}M parameters, {kind}; prompts: single {toks.get('single_prompt')} tokens, "
            f"shared prefix {toks.get('prefix')} + query ~{toks.get('query')} tokens, unrelated ~{toks.get('unrelated_prompt')} tokens.",
            "",
            "### Single request (batch 1)",
            "",
            *_single_table(model),
            "",
        ]
        serving_rows = _serving_table(model)
        if serving_rows:
            lines += ["### Few-shot serving over HTTP", "", *serving_rows, ""]
        agree = model.get("int8_agreement")
        if agree:
            lines += ["### int8 against fp32", "", _agreement_line(agree), ""]
        tp = _throughput_table(model)
        if tp:
            lines += ["### Throughput, unrelated prompts", "", *tp, ""]
        lines += curve_sections(model)
        failed = [(k, e) for k, e in _engines(model) if "error" in e]
        for key, eng in failed:
            lines += [f"- {eng.get('label', key)} failed: `{oneline(eng['error'])}`"]
        if failed:
            lines.append("")
    lines += _profile_section(results, judged)
    lines += _workload_notes(results)
    notes = results.get("notes") or []
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if meta.get("raw_results"):
        lines += [f"Raw results of this run: `{meta['raw_results']}`.", ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write BENCHMARKS.md and docs/bench.png under `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / "BENCHMARKS.md"
    md.write_text(render(results))
    png = plot(results, out / PLOT_NAME)
    return [md, png]
