"""The issue's targets, judged from one run's results (all ratios from the same run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fewshot.bench.stats import ratio

HEADLINE_MODELS = ("gpt-neo-125m", "gpt-neo-tiny")
SERVING_GOAL = 100.0  # x the baseline's requests/s (issue 10)
FLOOR_GOAL = 2.0  # x the int8 memory-bandwidth floor
CACHED_TTFT_GOAL = 2.0  # decode steps
CACHED_COLD_GOAL = 0.1  # x the cold time to first token
MEMORY_HEADROOM = 500e6  # bytes: peak RSS <= weights + KV cache + this (issue 10)
LLAMACPP_CONCURRENT_GOAL = 2.0  # ours at 8 concurrent requests, x llama.cpp's single stream
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "int8": 1}


@dataclass
class TargetResult:
    name: str
    measured: str
    goal: str
    met: bool | None  # None: not measured
    detail: str


def headline(results: dict[str, Any]) -> tuple[str | None, str | None]:
    """The model the targets are judged on (GPT-Neo-125M, else the first) and our engine key."""
    models = results.get("models", {})
    name = next((m for m in HEADLINE_MODELS if m in models), next(iter(models), None))
    dtypes = results.get("meta", {}).get("dtypes") or []
    return name, (f"ours-{dtypes[0]}" if dtypes else None)


def fastest_decoder(engines: dict[str, Any], default: str) -> str:
    """Which of our engines (one per dtype) decodes one sequence fastest: the batch-1 targets
    are judged on it (a deployment picks its dtype for its workload: int8 for one stream's
    latency, bf16 for batched throughput and prefill); `default` when none was measured."""
    steps = {
        key: _get(e, "single", "decode_s_per_token")
        for key, e in engines.items()
        if key.startswith("ours-")
    }
    timed = {k: v for k, v in steps.items() if v}
    return min(timed, key=lambda k: timed[k]) if timed else default


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _margin(value: float | None, goal: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    if higher_is_better:
        return (
            f"{value / goal:.2f}x the goal"
            if value >= goal
            else f"missed by {100 * (1 - value / goal):.0f}%"
        )
    return (
        f"{goal / value:.2f}x under the limit"
        if value <= goal
        else f"missed by {100 * (value / goal - 1):.0f}%"
    )


def judge(results: dict[str, Any]) -> list[TargetResult]:
    """Every target with its measured value and whether it is met."""
    name, ours_key = headline(results)
    if name is None or ours_key is None:
        return []
    model = results["models"][name]
    engines = model.get("engines", {})
    ours = engines.get(ours_key, {})
    base = engines.get("baseline", {})
    peers = {k: v for k, v in engines.items() if v.get("kind") == "peer" and "error" not in v}
    spec = model.get("model", {})
    # the host's memory bandwidth: its floors say nothing of a step on a GPU (`--device cuda`)
    on_cpu = results.get("meta", {}).get("device", "cpu") == "cpu"
    bandwidth = results.get("bandwidth_gbps") if on_cpu else None
    out: list[TargetResult] = []

    # 1. serving vs the baseline
    base_rps = _get(base, "serving", "requests_per_s")
    r = ratio(_get(ours, "serving", "requests_per_s"), base_rps)
    out.append(
        TargetResult(
            f"few-shot serving on {name}: {ours_key} vs baseline requests/s",
            "-" if r is None else f"{r:.1f}x",
            f">= {SERVING_GOAL:.0f}x",
            None if r is None else r >= SERVING_GOAL,
            _margin(r, SERVING_GOAL, True) + _serving_bound(results, base_rps, spec, bandwidth),
        )
    )
    # 2. serving vs the best peer
    peer_rps = {k: _get(v, "serving", "requests_per_s") for k, v in peers.items()}
    peer_rps = {k: v for k, v in peer_rps.items() if v}
    ours_rps = _get(ours, "serving", "requests_per_s")
    if peer_rps and ours_rps:
        best = max(peer_rps, key=lambda k: peer_rps[k])
        r = ours_rps / peer_rps[best]
        out.append(
            TargetResult(
                f"few-shot serving: ahead of the best peer ({best})",
                f"{r:.2f}x",
                "> 1x",
                r > 1,
                _margin(r, 1.0, True),
            )
        )
    else:
        out.append(
            TargetResult(
                "few-shot serving: ahead of the best peer", "-", "> 1x", None, "no peer measured"
            )
        )
    # 3. batch-1 decode vs OpenVINO int8, on our fastest batch-1 engine
    fast_key = fastest_decoder(engines, ours_key)
    fast = engines.get(fast_key, {})
    fast_step = _get(fast, "single", "decode_s_per_token")
    ov_step = _get(peers.get("peer-ov-int8"), "decode_s_per_token")
    r = ratio(ov_step, fast_step)
    out.append(
        TargetResult(
            f"batch-1 decode faster than OpenVINO int8 ({fast_key})",
            "-"
            if r is None
            else f"{1e3 * fast_step:.1f} vs {1e3 * ov_step:.1f} ms/token ({r:.2f}x)",
            "> 1x",
            None if r is None else r > 1,
            "OpenVINO int8 not measured" if r is None else _margin(r, 1.0, True),
        )
    )
    # 4. batch-1 decode vs the int8 memory-bandwidth floor
    floor = _int8_floor(spec, bandwidth)
    r = ratio(fast_step, floor)
    own = ""  # against the floor of the weights our engine actually read, when not int8
    per_weight = BYTES_PER_WEIGHT.get(fast.get("dtype", "int8"), 1)
    if r is not None and floor and per_weight > 1:
        own = f" ({r / per_weight:.2f}x the {fast['dtype']} floor of {1e3 * floor * per_weight:.1f} ms)"
    out.append(
        TargetResult(
            f"batch-1 decode within 2x of the int8 bandwidth floor ({fast_key})",
            "-"
            if r is None
            else f"{1e3 * fast_step:.1f} ms/token = {r:.2f}x the {1e3 * floor:.1f} ms floor{own}",
            f"<= {FLOOR_GOAL:.0f}x",
            None if r is None else r <= FLOOR_GOAL,
            _margin(r, FLOOR_GOAL, False),
        )
    )
    # 5. time to first token with a cached prefix, in decode steps (of the same engine)
    ours_step = _get(ours, "single", "decode_s_per_token")
    cached = _get(ours, "single", "ttft_cached_prefix_s")
    steps = ratio(cached, ours_step)
    probe = model.get("probe", {})
    p_steps = ratio(probe.get("ttft_cached_prefix_s"), probe.get("decode_s_per_token"))
    extra = "" if p_steps is None else f"; in-process (no HTTP): {p_steps:.2f} steps"
    out.append(
        TargetResult(
            "time to first token with a cached ~300-token prefix",
            "-"
            if steps is None
            else f"{1e3 * cached:.1f} ms = {steps:.2f} decode steps over HTTP{extra}",
            f"<= {CACHED_TTFT_GOAL:.0f} steps",
            None if steps is None else steps <= CACHED_TTFT_GOAL,
            _margin(steps, CACHED_TTFT_GOAL, False),
        )
    )
    # 5b. the same against a cold prompt of the same size
    cold = _get(ours, "single", "ttft_s")
    r = ratio(cached, cold)
    out.append(
        TargetResult(
            "time to first token with a cached prefix vs a cold prompt",
            "-" if r is None else f"{1e3 * cached:.1f} vs {1e3 * cold:.1f} ms ({r:.3f}x)",
            f"<= {CACHED_COLD_GOAL}x",
            None if r is None else r <= CACHED_COLD_GOAL,
            _margin(r, CACHED_COLD_GOAL, False),
        )
    )
    # 6. peak memory vs weights + KV cache + 500 MB
    peak = ours.get("peak_rss_single")
    dtype = ours.get("dtype", "int8")
    tokens = (model.get("prompt_tokens", {}).get("single_prompt") or 0) + results.get(
        "meta", {}
    ).get("sizes", {}).get("single_new_tokens", 0)
    need, kv_held, one_request = None, 0, 0
    if spec.get("n_params"):
        # the weights as the server holds them (int8: scales, a bf16 tied embedding), else
        # one size per weight
        weights = ours.get("weight_bytes") or spec["n_params"] * BYTES_PER_WEIGHT.get(dtype, 4)
        kv_per = 2 if dtype == "bf16" else 4
        one_request = 2 * spec["n_layers"] * spec["kv_width"] * tokens * kv_per
        # the KV the pool holds: every block the workload touched, what the prefix cache keeps
        # of earlier requests included (a server without the gauge: one request's KV)
        kv_held = max(one_request, ours.get("kv_bytes_touched") or 0)
        need = weights + kv_held
    kv_note = f"one request's KV: {one_request / 1e6:.0f} MB"
    if ours.get("kv_bytes_touched"):
        kv_note = f"KV: the pool's touched blocks, {kv_held / 1e6:.0f} MB; " + kv_note
    limit = None if need is None else need + MEMORY_HEADROOM
    r = ratio(peak, limit)
    runtime = results.get("runtime_rss")
    extra = ""
    if r is not None and runtime:
        extra = f" (of which the Python+torch runtime before any weights: {runtime / 1e6:.0f} MB)"
    out.append(
        TargetResult(
            "peak memory (RSS) of the single request, load included",
            "-"
            if r is None
            else f"{peak / 1e6:.0f} MB against {need / 1e6:.0f} MB of weights + KV ({kv_note})"
            f"{extra}",
            f"<= weights + KV + {MEMORY_HEADROOM / 1e6:.0f} MB",
            None if r is None else r <= 1,
            _margin(r, 1.0, False),
        )
    )
    out.extend(llamacpp_targets(results, ours_key))
    return out


def _int8_floor(spec: dict[str, Any], bandwidth: float | None) -> float | None:
    """Seconds to read every weight once in int8 (one byte each) at the measured bandwidth."""
    if not (bandwidth and spec.get("n_params")):
        return None
    return spec["n_params"] / (bandwidth * 1e9)


def _serving_bound(
    results: dict[str, Any], base_rps: float | None, spec: dict[str, Any], bandwidth: float | None
) -> str:
    """What the serving goal asks of one batched decode step, against the weight-read floor."""
    sizes = results.get("meta", {}).get("sizes", {})
    clients, new = sizes.get("concurrency"), sizes.get("serving_new_tokens")
    floor = _int8_floor(spec, bandwidth)
    if not (base_rps and clients and new and floor):
        return ""
    step = clients / (SERVING_GOAL * base_rps * new)  # every client's request: `new` steps
    return (
        f"; {SERVING_GOAL:.0f}x = {SERVING_GOAL * base_rps:.0f} requests/s of {new} tokens with "
        f"{clients} clients: one {clients}-sequence decode step every {1e3 * step:.1f} ms "
        f"(prefill left out), against {1e3 * floor:.1f} ms to read the weights once in int8"
    )


def llamacpp_targets(results: dict[str, Any], ours_key: str) -> list[TargetResult]:
    """On every model llama.cpp ran (the same GGUF file): batch-1 decode at least as fast, and
    8 concurrent requests at >= 2x its single-stream tokens/s."""
    out: list[TargetResult] = []
    for name, model in results.get("models", {}).items():
        engines = model.get("engines", {})
        peer = engines.get("peer-llamacpp")
        if not peer or "error" in peer:
            continue
        ours = engines.get(ours_key, {})
        fast_key = fastest_decoder(engines, ours_key)
        ours_step = _get(engines.get(fast_key), "single", "decode_s_per_token")
        peer_step = peer.get("decode_s_per_token")
        r = ratio(peer_step, ours_step)
        out.append(
            TargetResult(
                f"{name}: batch-1 decode at least as fast as llama.cpp ({fast_key})",
                "-"
                if r is None
                else f"{1e3 * ours_step:.1f} vs {1e3 * peer_step:.1f} ms/token ({r:.2f}x)",
                ">= 1x",
                None if r is None else r >= 1,
                _margin(r, 1.0, True),
            )
        )
        ours_tps = _get(ours, "throughput", "levels", "8", "tokens_per_s")
        peer_tps = peer.get("single_stream_tokens_per_s")
        r = ratio(ours_tps, peer_tps)
        out.append(
            TargetResult(
                f"{name}: 8 concurrent requests vs llama.cpp's single-stream tokens/s",
                "-" if r is None else f"{ours_tps:.1f} vs {peer_tps:.1f} tokens/s ({r:.2f}x)",
                f">= {LLAMACPP_CONCURRENT_GOAL:.0f}x",
                None if r is None else r >= LLAMACPP_CONCURRENT_GOAL,
                _margin(r, LLAMACPP_CONCURRENT_GOAL, True),
            )
        )
    return out
