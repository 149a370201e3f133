"""Measure `fewshot serve --replicas N` on Ray Serve against the same app served directly.

1. Latency added by Ray (proxy -> gateway -> replica): p50/p99 of small sequential requests
   (GET /health, and a 1-token /generate) through Ray vs the app under uvicorn in-process.
2. Prefix-cache hit rate of a few-shot workload (several distinct few-shot prefixes, each with
   several queries, shuffled, sent by concurrent clients) over N replicas with our
   prefix-affinity router vs Ray's default router (power of two choices); the single direct
   server (one cache for everything) is the ceiling. Hit rate = prompt tokens served from the
   prefix cache / prompt tokens, from the x-prefix-cache-tokens / x-prompt-tokens headers.

Everything runs in one invocation, on one local Ray instance; prints a Markdown report.

    python scripts/bench_ray.py                        # gpt-neo-tiny, 2 replicas
    python scripts/bench_ray.py --model gpt-neo-125m --prefixes 6 --queries 8
"""

from __future__ import annotations

import argparse
import random
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from fewshot.bench.machine import machine_info
from fewshot.bench.models import prepare
from fewshot.bench.stats import percentile
from fewshot.settings import Settings, configure_openmp

WORDS = "apple river stone cloud mirror lantern violin harbor meadow falcon copper willow".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def direct_server(settings: Settings) -> Iterator[str]:
    """The app under uvicorn in this process (the baseline: no Ray)."""
    import uvicorn

    from fewshot.api.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    wait_healthy(url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_healthy(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=10).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become healthy")


def few_shot_prompts(prefixes: int, queries: int, seed: int) -> list[tuple[int, str]]:
    """(prefix index, prompt) pairs, shuffled: each prefix is a task description and eight
    examples of its own; each query is a new example to complete."""
    rng = random.Random(seed)
    out = []
    for k in range(prefixes):
        task = f"Task {k}: give the category of each item ({rng.choice(WORDS)} rules).\n"
        examples = "".join(
            f"Item: {' '.join(rng.sample(WORDS, 4))}\nCategory: {rng.choice(WORDS)}\n###\n"
            for _ in range(8)
        )
        for q in range(queries):
            out.append((k, f"{task}{examples}Item: {' '.join(rng.sample(WORDS, 3))} {q}\n"))
    rng.shuffle(out)
    return out


def run_workload(url: str, prompts: list[tuple[int, str]], concurrency: int) -> dict[str, Any]:
    def one(item: tuple[int, str]) -> tuple[int, requests.Response, float]:
        k, prompt = item
        body = {"inputs": prompt, "parameters": {"max_new_tokens": 4}}
        t0 = time.perf_counter()
        response = requests.post(url + "/generate", json=body, timeout=600)
        response.raise_for_status()
        return k, response, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    prompt_tokens = sum(int(r.headers["x-prompt-tokens"]) for _, r, _ in results)
    cached = sum(int(r.headers["x-prefix-cache-tokens"]) for _, r, _ in results)
    replicas_per_prefix: dict[int, set[str]] = {}
    for k, r, _ in results:
        replicas_per_prefix.setdefault(k, set()).add(r.headers.get("x-fewshot-replica", "-"))
    load = Counter(r.headers.get("x-fewshot-replica", "-") for _, r, _ in results)
    latencies = [t for _, _, t in results]
    return {
        "hit_rate": cached / prompt_tokens,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "wall": wall,
        "replicas_per_prefix": sum(len(v) for v in replicas_per_prefix.values())
        / len(replicas_per_prefix),
        "load": sorted(load.values(), reverse=True),
    }


def latencies(url: str, n: int) -> dict[str, dict[str, float | None]]:
    out = {}
    session = requests.Session()
    calls = {
        "GET /health": lambda: session.get(url + "/health", timeout=60),
        "POST /generate (1 token)": lambda: session.post(
            url + "/generate",
            json={"inputs": "Hello", "parameters": {"max_new_tokens": 1}},
            timeout=60,
        ),
    }
    for name, call in calls.items():
        for _ in range(5):  # warm-up
            call().raise_for_status()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            call().raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = {"p50": percentile(times, 50), "p99": percentile(times, 99)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="gpt-neo-tiny")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--prefixes", type=int, default=6)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--latency-requests", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    configure_openmp()

    import ray

    model = prepare(args.model, Path(tempfile.gettempdir()) / "fewshot-bench-models")
    base = {
        "models": [f"model={model.hf_dir}"],
        "threads": 1,
        "kv_cache_mb": 512,
        "cache_dir": Path(tempfile.mkdtemp(prefix="fewshot-bench-ray-")),
    }
    prompts = few_shot_prompts(args.prefixes, args.queries, args.seed)
    rows: dict[str, dict[str, Any]] = {}
    lat: dict[str, dict[str, dict[str, float | None]]] = {}
    started = time.time()

    with direct_server(Settings(**base, port=free_port())) as url:
        lat["direct (uvicorn)"] = latencies(url, args.latency_requests)
        rows["1 server, no Ray (ceiling)"] = run_workload(url, prompts, args.concurrency)

    from ray import serve

    from fewshot.serving.launch import serving

    ray.init(
        address="local",
        num_cpus=max(2, args.replicas),
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        port = free_port()  # Serve's proxy keeps the port it started with
        for router in ("prefix", "default"):
            settings = Settings(
                **base, port=port, replicas=args.replicas, replica_cpus=1, router=router
            )
            with serving(settings) as url:
                wait_healthy(url)
                name = f"{args.replicas} replicas, {router} router"
                rows[name] = run_workload(url, prompts, args.concurrency)
                if router == "prefix":
                    lat["Ray Serve (proxy + gateway)"] = latencies(url, args.latency_requests)
    finally:
        serve.shutdown()
        ray.shutdown()

    info = machine_info()
    print(f"## Ray Serve scale-out (`scripts/bench_ray.py`, {args.model})\n")
    print(
        f"- CPU: {info.cpu_model}; {info.available_cores} cores available; "
        f"flags: {', '.join(info.flags) or 'none of interest'}; load average at the end: "
        f"{info.load_avg_1m}"
    )
    print(
        f"- {args.replicas} replicas x 1 torch thread on one local Ray; run took "
        f"{(time.time() - started) / 60:.1f} min; Python {info.python}, torch {info.torch}\n"
    )
    print(f"### Latency added by Ray ({args.latency_requests} sequential requests each, ms)\n")
    print("| route | direct p50 | direct p99 | Ray p50 | Ray p99 | added p50 | added p99 |")
    print("|---|---|---|---|---|---|---|")
    direct, via = lat["direct (uvicorn)"], lat["Ray Serve (proxy + gateway)"]
    for route in direct:
        d, r = direct[route], via[route]
        print(
            f"| {route} | {d['p50']:.1f} | {d['p99']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {r['p50'] - d['p50']:+.1f} | {r['p99'] - d['p99']:+.1f} |"
        )
    print(
        f"\n### Few-shot workload: {args.prefixes} prefixes x {args.queries} queries "
        f"(~{len(prompts[0][1])} characters each), {args.concurrency} concurrent clients\n"
    )
    print(
        "| serving | prefix-cache hit rate | replicas per prefix | requests per replica "
        "| p50 s | p99 s | wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['hit_rate']:.1%} | {row['replicas_per_prefix']:.2f} "
            f"| {'/'.join(map(str, row['load']))} | {row['p50']:.3f} | {row['p99']:.3f} "
            f"| {row['wall']:.2f} |"
        )
    prefix = rows[f"{args.replicas} replicas, prefix router"]["hit_rate"]
    default = rows[f"{args.replicas} replicas, default router"]["hit_rate"]
    print(f"\nHit rate, prefix-affinity router / Ray's default router: {prefix / default:.2f}x")


if __name__ == "__main__":
    main()
