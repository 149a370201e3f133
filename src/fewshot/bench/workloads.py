"""The three workloads, run against any server that speaks the HF and TGI wire formats.

Timings are client-side over HTTP on 127.0.0.1. Every measured prompt is fresh (never sent
before to that server) unless the point is to reuse a prefix, so a prefix cache only helps where
the workload says it may.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from fewshot.bench.http_client import Reply, hf_request, run_concurrent, tgi_request
from fewshot.bench.stats import median, percentile


@dataclass
class Target:
    """Where to send requests: the server's base URL and the model id of the HF route."""

    base_url: str
    model_id: str


def _tokens(reply: Reply, requested: int) -> int:
    return reply.generated_tokens if reply.generated_tokens is not None else requested


def single_request(
    target: Target,
    cold_prompts: Sequence[str],
    prefix: str,
    queries: Sequence[str],
    new_tokens: int,
    rounds: int,
) -> dict:
    """Batch-1 latency. Per round: time to first token on a fresh ~350-token prompt (one new
    token), a fresh prompt with `new_tokens` new tokens (decode ms/token = the difference over
    the extra tokens), and time to first token of `prefix + query` right after another query
    on the same prefix (what a prefix cache makes cheap).

    Needs 2 * rounds + 1 cold prompts and 2 * rounds + 1 queries.
    """
    send = partial(tgi_request, target.base_url)
    send(cold_prompts[0], 4)  # warm-up
    send(prefix + queries[0], 1)
    ttft, decode, cached, first_on_prefix, generated = [], [], [], [], []
    for r in range(rounds):
        first = send(cold_prompts[1 + 2 * r], 1)
        full = send(cold_prompts[2 + 2 * r], new_tokens)
        n = _tokens(full, new_tokens)
        ttft.append(first.latency)
        generated.append(n)
        if n > 1:
            decode.append((full.latency - first.latency) / (n - 1))
        q1, q2 = queries[1 + 2 * r], queries[2 + 2 * r]
        first_on_prefix.append(send(prefix + q1, 1).latency)
        cached.append(send(prefix + q2, 1).latency)
    return {
        "ttft_s": median(ttft),
        "decode_s_per_token": median(decode),
        "ttft_cached_prefix_s": median(cached),
        "ttft_prefix_after_change_s": median(first_on_prefix),
        "generated_tokens": generated,
        "rounds": {"ttft_s": ttft, "decode_s_per_token": decode, "ttft_cached_prefix_s": cached},
    }


def serving(
    target: Target,
    prefix: str,
    queries: Sequence[str],
    requests_per_round: int,
    rounds: int,
    concurrency: int,
    new_tokens: int,
    stop: str,
) -> dict:
    """Few-shot serving over the HF route: `requests_per_round` requests sharing `prefix` with
    distinct queries, from `concurrency` client threads, greedy, `new_tokens`, stop at `stop`.
    One warm-up request on the prefix first (a server that caches prefixes may keep it).

    Needs rounds * requests_per_round + 1 queries.
    """
    send = partial(
        hf_request, target.base_url, target.model_id, max_new_tokens=new_tokens, stop=[stop]
    )
    send(prefix + queries[0])
    rps, p50, p99, latencies, stopped, chars = [], [], [], [], 0, 0
    for r in range(rounds):
        batch = [
            prefix + q
            for q in queries[1 + r * requests_per_round : 1 + (r + 1) * requests_per_round]
        ]
        replies, wall = run_concurrent(send, batch, concurrency)
        lat = [rep.latency for rep in replies]
        latencies.extend(lat)
        rps.append(len(batch) / wall)
        p50.append(percentile(lat, 50))
        p99.append(percentile(lat, 99))
        stopped += sum(1 for rep in replies if stop in rep.text)
        chars += sum(len(rep.text) for rep in replies)
    n = rounds * requests_per_round
    return {
        "requests_per_s": median(rps),
        "p50_s": median(p50),
        "p99_s": median(p99),
        "requests": n,
        "concurrency": concurrency,
        "new_tokens": new_tokens,
        "replies_with_stop": stopped,
        "mean_reply_chars": chars / n if n else 0.0,
        "rounds": {"requests_per_s": rps, "p50_s": p50, "p99_s": p99},
    }


def throughput(
    target: Target,
    prompts: Sequence[str],
    levels: Sequence[int],
    rounds: int,
    new_tokens: int,
) -> dict:
    """Total generated tokens/s with C concurrent unrelated prompts, for each C in `levels`
    (one request per client, all sent at once). Needs rounds * sum(levels) + 1 prompts."""
    send = partial(tgi_request, target.base_url, max_new_tokens=new_tokens)
    send(prompts[0])
    cursor = 1
    per_level: dict[str, dict] = {}
    rates: dict[int, list[float]] = {c: [] for c in levels}
    tokens: dict[int, list[int]] = {c: [] for c in levels}
    for _ in range(rounds):
        for c in levels:
            batch = list(prompts[cursor : cursor + c])
            cursor += c
            replies, wall = run_concurrent(send, batch, c)
            total = sum(_tokens(rep, new_tokens) for rep in replies)
            rates[c].append(total / wall)
            tokens[c].append(total)
    for c in levels:
        per_level[str(c)] = {
            "tokens_per_s": median(rates[c]),
            "rounds": rates[c],
            "tokens": tokens[c],
        }
    return {"levels": per_level, "new_tokens": new_tokens}


def prompts_needed(rounds: int, serving_requests: int, levels: Sequence[int]) -> dict[str, int]:
    """How many distinct prompts of each kind the workloads above consume."""
    return {
        "cold": 2 * rounds + 1,
        "single_queries": 2 * rounds + 1,
        "serving_queries": rounds * serving_requests + 1,
        "unrelated": rounds * sum(levels) + 1,
    }
