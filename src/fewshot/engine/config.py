"""Typed engine configuration, built once (from `Settings` in the server, from keywords in `LLM`).

`EngineConfig` is what the core loop, scheduler and runner read; `CacheConfig` sizes the paged
KV pool. Nothing here reads the environment: the settings module does that.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fewshot.settings import Settings


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV pool of one model."""

    block_size: int = 16
    """Tokens per KV block; also the granularity of prefix-cache hits."""
    kv_cache_mb: float | None = None
    """Pool size in MiB; None sizes it from free memory (a quarter of it, at most what
    `max_batch_size` sequences of `max_model_len` tokens need)."""
    kv_dtype: str | None = None
    """"fp32" | "bf16" | None or "auto" (`quant.auto_kv_dtype`: the model's own dtype, bf16
    for int8 weights where the native kernels or the CPU's AVX512-BF16 read it)."""
    prefix_caching: bool = True
    """Share computed full blocks between requests by their chained token hash."""

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.kv_cache_mb is not None and self.kv_cache_mb <= 0:
            raise ValueError("kv_cache_mb must be > 0 (or None for automatic sizing)")
        if self.kv_dtype not in (None, "fp32", "bf16", "auto"):
            raise ValueError(f"kv_dtype must be fp32, bf16 or auto, got {self.kv_dtype!r}")


@dataclass(frozen=True)
class EngineConfig:
    """Scheduling limits of one engine."""

    max_batch_size: int = 32
    """Most sequences in one step (decodes plus prefills)."""
    prefill_chunk: int = 512
    """Prompt tokens per step while other sequences decode (so they are not starved)."""
    idle_prefill_tokens: int = 4096
    """Prompt tokens per step when nothing decodes (bounds activation memory)."""
    max_model_len: int | None = None
    """Longest sequence (prompt + new tokens) to size the automatic pool for; None: the
    model's limit, capped at 4096."""
    speculative_tokens: int = 0
    """Prompt-lookup drafts verified per decode step (0: no speculation)."""
    speculative_max_ngram: int = 3
    """Longest n-gram matched against earlier tokens to find drafts."""
    speculative_max_batch: int = 1
    """Draft only while at most this many sequences decode: a batch already shares each weight
    load, and verifying drafts then costs compute the accepted tokens do not repay (Gemma 3
    270M int8 on 2 AVX2 cores, few-shot requests, every draft accepted: 0.74x, 0.80x and 0.68x
    at 2, 4 and 8 concurrent, one at a time 1.07-1.21x; BENCHMARKS.md, fifteenth pass)."""
    compile: bool = False
    """Run the model through torch.compile (Inductor, dynamic shapes): the layers' dense parts
    become fused kernels, attention stays eager. Compiled once per process (cached on disk)."""
    cuda_graphs: bool | None = None
    """Steps of decodes and short chunks replayed as CUDA graphs (models/step_graphs.py).
    None: on CUDA devices (not with `compile`); False: never (the eager step, the exactness
    reference); True: also elsewhere, where the same fixed-shape step runs eagerly (tests)."""
    threads: int | None = None
    """Torch intra-op threads of the engine thread; None: the cores this process may use."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """The KV pool."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if (
            self.speculative_tokens < 0
            or self.speculative_max_ngram < 1
            or self.speculative_max_batch < 1
        ):
            raise ValueError(
                "speculative_tokens must be >= 0, speculative_max_ngram and "
                "speculative_max_batch >= 1"
            )
        if self.prefill_chunk < 1 or self.idle_prefill_tokens < 1:
            raise ValueError("prefill_chunk and idle_prefill_tokens must be >= 1")

    def replace(self, **options: Any) -> EngineConfig:
        """A copy with some EngineConfig or CacheConfig fields changed (by name)."""
        own = {f.name for f in dataclasses.fields(self)}
        cache_fields = {f.name for f in dataclasses.fields(CacheConfig)}
        unknown = sorted(set(options) - own - cache_fields)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
        cache = {k: v for k, v in options.items() if k in cache_fields}
        top = {k: v for k, v in options.items() if k in own}
        if cache:
            top["cache"] = dataclasses.replace(top.get("cache", self.cache), **cache)
        return dataclasses.replace(self, **top) if top else self

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        """The engine configuration the server's settings describe."""
        return cls(
            max_batch_size=settings.max_batch_size,
            max_model_len=settings.max_total_tokens,
            threads=settings.threads,
            speculative_tokens=settings.speculative_tokens,
            speculative_max_batch=settings.speculative_max_batch,
            compile=settings.compile,
            cuda_graphs=None if settings.cuda_graphs else False,
            cache=CacheConfig(
                kv_cache_mb=settings.kv_cache_mb,
                kv_dtype=settings.kv_dtype,
                prefix_caching=settings.prefix_caching,
            ),
        )
