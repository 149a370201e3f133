"""Run the whole benchmark: per model, the baseline server, our server in each dtype, the
optional peers and an in-process probe of our engine; then write the report.

Servers run one at a time (so they never compete for the cores), each as a subprocess on its
own port. Raw results are saved as JSON under the work directory after every step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fewshot.bench import models as bench_models
from fewshot.bench import peers as bench_peers
from fewshot.bench import report
from fewshot.bench.config import BenchConfig, SidePlan
from fewshot.bench.curves import CurvePrompts, plan_curve_prompts, run_curves
from fewshot.bench.http_client import engine_gauge, round_trip
from fewshot.bench.machine import machine_info, measure_bandwidth
from fewshot.bench.prompts import PromptSet, build_prompt_set, token_counter
from fewshot.bench.servers import ServerProcess, baseline_argv, free_port, ours_argv
from fewshot.bench.workloads import Target, prompts_needed, serving, single_request, throughput

OURS_ALIAS = "bench"
Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def runtime_probe() -> dict[str, Any]:
    """The server process's memory before any weights, stage by stage (`runtime_probe`): what
    any Python server of a torch model pays, and what ours adds."""
    argv = [sys.executable, "-m", "fewshot.bench.runtime_probe"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {
            "error": f"runtime probe gave no result (exit {out.returncode}): {out.stderr[-500:]}"
        }


def _run_side(
    server: ServerProcess,
    model_id: str,
    side: SidePlan,
    prompts: PromptSet,
    cfg: BenchConfig,
    log: Log,
    curve_prompts: CurvePrompts | None = None,
    scaling_levels: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Start `server`, run the side's workloads, stop it; everything measured, or an error."""
    res: dict[str, Any] = {}
    workloads = cfg.workloads(side)
    try:
        server.start()
        res["startup_s"] = server.startup_seconds
        res["rss_loaded"] = server.rss()
        res["http_overhead_s"] = round_trip(server.base_url, "/health")
        target = Target(server.base_url, model_id)
        if "single" in workloads:
            log(f"  {server.label}: single request")
            res["single"] = single_request(
                target,
                prompts.cold,
                prompts.prefix,
                prompts.single_queries,
                cfg.single_new_tokens,
                cfg.rounds,
            )
            res["peak_rss_single"] = server.peak_rss()
            res["weight_bytes"] = engine_gauge(server.base_url, "weight_bytes")
            res["kv_bytes_touched"] = engine_gauge(server.base_url, "kv_cache_bytes_touched")
        if "serving" in workloads and side.serving_requests > 0:
            log(
                f"  {server.label}: few-shot serving, {side.serving_requests} requests x {cfg.rounds}"
            )
            res["serving"] = serving(
                target, prompts.prefix, prompts.serving_queries, side.serving_requests, cfg.rounds,
                cfg.concurrency, cfg.serving_new_tokens, cfg.stop,
            )  # fmt: skip
        if "throughput" in workloads and side.throughput_levels:
            log(f"  {server.label}: throughput at {list(side.throughput_levels)} concurrent")
            res["throughput"] = throughput(
                target,
                prompts.unrelated,
                side.throughput_levels,
                cfg.rounds,
                cfg.throughput_new_tokens,
            )
        if curve_prompts is not None:
            res.update(
                run_curves(target, server.label, workloads, curve_prompts, scaling_levels, cfg, log)
            )
        res["peak_rss"] = server.peak_rss()
    except Exception as exc:  # one engine failing must not lose the others' results
        res["error"] = f"{type(exc).__name__}: {exc}"
        res["log_tail"] = server.log_tail()
        log(f"  {server.label} FAILED: {res['error']}")
    finally:
        server.stop()
    return res


def _prompt_file(path: Path, prompts: PromptSet) -> Path:
    data = {
        "cold": prompts.cold,
        "prefix": prompts.prefix,
        "single_queries": prompts.single_queries,
        "serving_queries": prompts.serving_queries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _probe(
    model: bench_models.BenchModel, dtype: str, prompt_file: Path, cfg: BenchConfig, log_path: Path
) -> dict:
    argv = [
        sys.executable, "-m", "fewshot.bench.engine_probe", "--model", model.ours_source,
        "--dtype", dtype, "--device", cfg.device, "--threads", str(cfg.threads),
        "--prompts", str(prompt_file),
        "--rounds", str(cfg.rounds), "--new-tokens", str(cfg.single_new_tokens),
        "--profile-tokens", str(cfg.single_new_tokens if cfg.profile else 0),
    ]  # fmt: skip
    with log_path.open("w") as log:
        out = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=log, text=True, timeout=cfg.server_timeout_s
        )
    for line in reversed(out.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {"error": f"engine probe gave no result (exit {out.returncode}); see {log_path}"}


def _agreement(
    model: bench_models.BenchModel, prompt_file: Path, cfg: BenchConfig, log_path: Path
) -> dict:
    argv = [
        sys.executable, "-m", "fewshot.bench.agreement", "--model", model.ours_source,
        "--prompts", str(prompt_file), "--threads", str(cfg.threads),
    ]  # fmt: skip
    with log_path.open("w") as log:
        out = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=log, text=True, timeout=cfg.server_timeout_s
        )
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"agreement gave no result (exit {out.returncode}); see {log_path}"}


def run_model(
    name: str,
    cfg: BenchConfig,
    discovery: bench_peers.PeerDiscovery,
    log: Log,
    save: Callable[[dict[str, Any]], None] = lambda partial: None,
) -> dict[str, Any]:
    """Everything measured on one model; `save(partial)` is called after every engine, so a run
    cut short keeps what it measured."""
    plan = cfg.plan(name)
    root = cfg.work / "models"
    log(f"{name}: preparing model")
    model = bench_models.prepare(name, root, seed=cfg.seed)
    count = token_counter(str(model.hf_dir / "tokenizer.json"))
    levels = sorted(set(plan.baseline.throughput_levels) | set(plan.ours.throughput_levels))
    serving_max = max(plan.baseline.serving_requests, plan.ours.serving_requests)
    needed = prompts_needed(cfg.rounds, serving_max, levels or [1])
    prompts = build_prompt_set(
        count, needed, cfg.single_tokens, cfg.prefix_tokens, cfg.unrelated_tokens
    )
    logs = cfg.work / "logs" / name
    prompt_file = _prompt_file(cfg.work / "prompts" / f"{name}.json", prompts)
    sides = [(plan.baseline, cfg.curve_baseline_concurrency), (plan.ours, cfg.curve_concurrency)]
    curve_prompts, curve_info = plan_curve_prompts(
        cfg, sides, count, model.hf_dir, needed["unrelated"]
    )
    out: dict[str, Any] = {
        "model": bench_models.describe(model),
        "prompt_tokens": prompts.tokens,
        "curves": curve_info,
        "engines": {},
    }

    on = "" if cfg.device == "cpu" else f" on {cfg.device}"
    log(f"{name}: baseline (transformers pipeline, fp32{on})")
    port = free_port()
    server = ServerProcess(
        "baseline", baseline_argv(model.hf_dir, port, cfg.threads, cfg.device), port,
        logs / "baseline.log", startup_timeout=cfg.server_timeout_s,
    )  # fmt: skip
    base = _run_side(
        server, "bench", plan.baseline, prompts, cfg, log, curve_prompts,
        cfg.curve_baseline_concurrency,
    )  # fmt: skip
    out["engines"]["baseline"] = {
        "label": f"transformers pipeline fp32{on} (baseline)",
        "kind": "baseline",
        "dtype": "fp32",
        **base,
    }
    save(out)

    for dtype in cfg.dtypes:
        log(f"{name}: ours ({dtype})")
        port = free_port()
        server = ServerProcess(
            f"ours-{dtype}",
            ours_argv(model.ours_source, OURS_ALIAS, port, cfg.threads, dtype, cfg.device),
            port, logs / f"ours-{dtype}.log", startup_timeout=cfg.server_timeout_s,
        )  # fmt: skip
        res = _run_side(
            server, OURS_ALIAS, plan.ours, prompts, cfg, log, curve_prompts,
            cfg.curve_concurrency,
        )  # fmt: skip
        out["engines"][f"ours-{dtype}"] = {
            "label": f"fewshot serve {dtype}{on}",
            "kind": "ours",
            "dtype": dtype,
            **res,
        }
        save(out)

    if plan.peers:
        for peer in discovery.peers:
            if not bench_peers.applies(peer, model):
                continue
            log(f"{name}: peer {peer.backend}")
            res = bench_peers.run_peer(
                peer, model, prompt_file, cfg.work / "peers", cfg.threads, cfg.rounds,
                cfg.single_new_tokens, plan.ours.serving_requests, cfg.serving_new_tokens,
                cfg.concurrency, cfg.stop, cfg.peer_timeout_s, logs / f"peer-{peer.backend}.log",
            )  # fmt: skip
            if "error" in res:
                log(f"  peer {peer.backend} FAILED: {res['error']}")
            out["engines"][f"peer-{peer.backend}"] = {"label": peer.label, "kind": "peer", **res}
            save(out)

    if "int8" in cfg.dtypes:
        log(f"{name}: int8 top-1 agreement with fp32")
        out["int8_agreement"] = _agreement(model, prompt_file, cfg, logs / "agreement.log")

    if cfg.dtypes:
        log(f"{name}: in-process probe of our engine ({cfg.dtypes[0]}), with a profile")
        out["probe"] = _probe(model, cfg.dtypes[0], prompt_file, cfg, logs / "probe.log")
        out["probe"]["dtype"] = cfg.dtypes[0]
    return out


def prepare(cfg: BenchConfig, log: Log = _log) -> None:
    """Build every model directory and export every peer model once, measuring nothing, so
    that the timed run starts with everything cached."""
    discovery = bench_peers.discover(
        cfg.peer_pythons, cfg.peer_backends, cfg.work / "peers" / "home", cfg.threads
    )
    for note in discovery.notes:
        log(note)
    for name in cfg.models:
        log(f"{name}: preparing model")
        model = bench_models.prepare(name, cfg.work / "models", seed=cfg.seed)
        if not cfg.plan(name).peers:
            continue
        count = token_counter(str(model.hf_dir / "tokenizer.json"))
        needed = {"cold": 1, "single_queries": 1, "serving_queries": 1, "unrelated": 1}
        prompts = build_prompt_set(count, needed, cfg.single_tokens, cfg.prefix_tokens, 8)
        prompt_file = _prompt_file(cfg.work / "prompts" / f"{name}-prepare.json", prompts)
        for peer in discovery.peers:
            if bench_peers.applies(peer, model):
                log(f"{name}: exporting for peer {peer.backend}")
                res = bench_peers.run_peer(
                    peer, model, prompt_file, cfg.work / "peers", cfg.threads, 0, 1, 0, 1, 1,
                    cfg.stop, cfg.peer_timeout_s, cfg.work / "logs" / name / f"prepare-{peer.backend}.log",
                )  # fmt: skip
                if "error" in res:
                    log(f"  peer {peer.backend} FAILED: {res['error']}")


def run(cfg: BenchConfig, log: Log = _log) -> dict[str, Any]:
    """Run everything in `cfg`, save raw JSON, write BENCHMARKS.md and the plot."""
    t0 = time.perf_counter()
    cfg.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "meta": {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": cfg.command,
            "threads": cfg.threads,
            "device": cfg.device,
            "rounds": cfg.rounds,
            "dtypes": cfg.dtypes,
            "quick": cfg.quick,
            "sizes": {
                "single_prompt_tokens": cfg.single_tokens,
                "prefix_tokens": cfg.prefix_tokens,
                "single_new_tokens": cfg.single_new_tokens,
                "serving_new_tokens": cfg.serving_new_tokens,
                "concurrency": cfg.concurrency,
                "throughput_new_tokens": cfg.throughput_new_tokens,
                "unrelated_prompt_tokens": cfg.unrelated_tokens,
                "stop": cfg.stop,
            },
            "curves": {
                "on": cfg.curves,
                "concurrency": list(cfg.curve_concurrency),
                "baseline_concurrency": list(cfg.curve_baseline_concurrency),
                "lengths": list(cfg.curve_lengths),
                "new_tokens": cfg.curve_new_tokens,
                "requests_min": cfg.curve_requests_min,
                "rounds": cfg.curve_rounds,
                "point_s": cfg.curve_point_s,
            },
        },
        "notes": [],
        "models": {},
    }
    log("machine and memory bandwidth")
    results["machine"] = machine_info(cfg.device).to_dict()
    results["bandwidth_gbps"] = measure_bandwidth(cfg.threads, cfg.bandwidth_mb)
    results["runtime"] = runtime_probe()
    results["runtime_rss"] = results["runtime"].get("rss")
    discovery = bench_peers.discover(
        cfg.peer_pythons, cfg.peer_backends, cfg.work / "peers" / "home", cfg.threads
    )
    results["notes"].extend(discovery.notes)
    results["peers"] = [{"backend": p.backend, "python": str(p.python)} for p in discovery.peers]
    raw = cfg.work / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)

    def save(partial: dict[str, Any], name: str) -> None:
        results["models"][name] = partial
        raw.write_text(json.dumps(results, indent=2, default=str))

    for name in cfg.models:
        try:
            results["models"][name] = run_model(
                name, cfg, discovery, log, lambda partial, n=name: save(partial, n)
            )
        except Exception as exc:
            results["models"][name] = {"error": f"{type(exc).__name__}: {exc}", "engines": {}}
            log(f"{name} FAILED: {exc}")
        raw.write_text(json.dumps(results, indent=2, default=str))
    results["meta"]["bandwidth_gbps_end"] = measure_bandwidth(cfg.threads, cfg.bandwidth_mb)
    results["meta"]["wall_s"] = time.perf_counter() - t0
    results["meta"]["raw_results"] = str(raw)
    raw.write_text(json.dumps(results, indent=2, default=str))
    written = report.write(results, cfg.out)
    for path in written:
        log(f"wrote {path}")
    log(f"raw results: {raw}")
    return results
