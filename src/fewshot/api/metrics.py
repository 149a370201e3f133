"""Prometheus metrics of one app, in its own CollectorRegistry (several apps may share a process).

Counters and histograms are labelled by served model name; the engine's own statistics
(`llm.stats()`: prefix-cache hits, running and waiting requests...) are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fewshot.engine.types import GenerationResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EngineStatsCollector(Collector):
    """Exports every numeric entry of each loaded model's `llm.stats()` as a gauge."""

    def __init__(self, stats_source: Callable[[], Iterable[tuple[str, dict[str, Any]]]]) -> None:
        self._source = stats_source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for model, stats in self._source():
            for key, value in _flatten(stats):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                name = f"fewshot_engine_{key}"
                if name not in families:
                    families[name] = GaugeMetricFamily(
                        name, f"Engine statistic {key}", labels=["model"]
                    )
                families[name].add_metric([model], float(value))
        return list(families.values())


def _flatten(stats: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in stats.items():
        name = f"{prefix}{key}".replace(".", "_").replace("-", "_")
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}_")
        else:
            yield name, value


class Metrics:
    """The app's metrics. `render()` gives the Prometheus text exposition."""

    def __init__(self, stats_source: Callable[[], Iterable[tuple[str, dict[str, Any]]]]) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fewshot_requests", "Inference requests", ["model", "route"], registry=r
        )
        self.errors = Counter(
            "fewshot_request_errors",
            "Failed requests by error type",
            ["route", "error_type"],
            registry=r,
        )
        self.cancelled = Counter(
            "fewshot_requests_cancelled",
            "Streams closed by the client before the end",
            ["model"],
            registry=r,
        )
        self.response_cache_hits = Counter(
            "fewshot_response_cache_hits",
            "Requests answered from the use_cache response cache",
            ["model"],
            registry=r,
        )
        self.inflight = Gauge(
            "fewshot_inflight_requests", "Admitted requests not finished yet", registry=r
        )
        self.duration = Histogram(
            "fewshot_request_duration_seconds",
            "Request wall time",
            ["model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "fewshot_queue_seconds",
            "Time a sequence waited before its prefill",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "fewshot_time_to_first_token_seconds",
            "Time from admission to the first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            "fewshot_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.prompt_tokens = Counter(
            "fewshot_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "fewshot_prefix_cache_cached_tokens",
            "Prompt tokens whose KV came from the prefix cache",
            ["model"],
            registry=r,
        )
        self.prefix_hit_rate = Gauge(
            "fewshot_prefix_cache_hit_rate",
            "Share of prompt tokens served from the prefix cache",
            ["model"],
            registry=r,
        )
        self.model_ready = Gauge(
            "fewshot_model_ready",
            "1 when the model is loaded, 0 while loading or failed",
            ["model"],
            registry=r,
        )
        self._prompt_total: dict[str, float] = {}
        self._cached_total: dict[str, float] = {}
        r.register(EngineStatsCollector(stats_source))

    def count_error(self, route: str, error_type: str) -> None:
        self.errors.labels(route, error_type).inc()

    def record_prompt(self, model: str, prompt_tokens: int, cached_tokens: int) -> None:
        """Count one prompt's prefill (once per prompt, whatever the number of sequences)."""
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.cached_tokens.labels(model).inc(cached_tokens)
        self._prompt_total[model] = self._prompt_total.get(model, 0) + prompt_tokens
        self._cached_total[model] = self._cached_total.get(model, 0) + cached_tokens
        if self._prompt_total[model]:
            self.prefix_hit_rate.labels(model).set(
                self._cached_total[model] / self._prompt_total[model]
            )

    def record_result(self, model: str, result: GenerationResult) -> None:
        """Timings and generated tokens of one finished sequence."""
        self.generated_tokens.labels(model).inc(result.generated_tokens)
        self.queue_time.labels(model).observe(result.queue_time)
        if result.generated_tokens:
            self.ttft.labels(model).observe(result.time_to_first_token)

    def render(self) -> bytes:
        return generate_latest(self.registry)
