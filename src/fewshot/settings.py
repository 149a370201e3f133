"""Server and engine settings: the one place that reads environment variables (FEWSHOT_*).

The CLI builds a `Settings` from its flags (flags win over the environment) and passes it down;
no other module looks at `os.environ`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "gemma-3-270m"


def available_cores() -> int:
    """Cores this process may really run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


OPENMP_SPIN_COUNT = 10000  # busy-wait rounds of an idle OpenMP thread: see configure_openmp


def configure_openmp(environ: dict[str, str] | None = None) -> None:
    """Let OpenMP threads spin briefly, then sleep, between parallel regions (unless the user chose).

    Must run before torch is imported (libgomp reads its environment when it loads). torch runs
    each operator as an OpenMP parallel region, hundreds per decode step, a few microseconds
    apart. libgomp's default (no OMP_WAIT_POLICY) spins ~300,000 rounds after each region: when
    anything else wants a core (the server's event loop, another process), a spinning worker
    holds it and the master then waits at the next barrier for a descheduled worker. A passive
    policy (no spin) pays a futex wake-up per region instead. A bounded spin (`GOMP_SPINCOUNT`)
    keeps the workers awake across one step's back-to-back operators and lets them sleep
    between steps. Measured with `fewshot serve` on 2 cores (Sapphire Rapids, GPT-Neo-125M, 2
    threads, 64 greedy tokens after a 341-token prompt over HTTP, ms per token; "loaded" = one
    busy process beside the server; serving = 8 clients sharing a few-shot prefix, requests/s):

        policy              fp32 quiet  fp32 loaded   bf16 quiet  bf16 loaded  bf16 serving
        default (300,000)    23          495
        passive (0)          34           42
        spin 30,000                                    17          115          9.4
        spin 10,000          23           67           18           72          9.2   <- chosen
        spin 3,000           26           47           23           48          7.8

    With bf16's shorter operators the wake-ups weigh more: 10,000 keeps nearly all of the quiet
    host's speed; a host shared with busy processes is slower with any spin (fewer threads
    help more there: `--threads`).
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", str(OPENMP_SPIN_COUNT))


def configure_compile_cache(cache_dir: Path, environ: dict[str, str] | None = None) -> None:
    """Keep torch.compile's (Inductor's) artifacts in our cache dir, so a restart reuses them
    instead of compiling again (unless the user chose another place)."""
    env = os.environ if environ is None else environ
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))


def default_cache_dir() -> Path:
    """Where fewshot keeps converted models (dequantised GGUF, built tokenizers)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "fewshot" if xdg else Path.home() / ".cache" / "fewshot"


class Settings(BaseSettings):
    """Everything configurable, with defaults. Environment: FEWSHOT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="FEWSHOT_", extra="ignore")

    models: list[str] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="Models to serve (name, path, hub id or GGUF file); NAME=SOURCE gives an alias",
    )
    host: str = Field("127.0.0.1", description="Address to bind")
    port: int = Field(8000, description="Port to bind")
    api_keys: list[str] = Field(
        default_factory=list, description="Bearer tokens accepted; empty means no auth"
    )
    api_key_file: Path | None = Field(None, description="File with one API key per line")
    dtype: str = Field(
        "auto",
        description="Weights: auto (bf16 on CUDA, int8 on CPUs with the C kernels, else fp32) | fp32 | bf16 | int8",
    )
    device: str = Field(
        "auto", description="auto (CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N"
    )
    threads: int = Field(default_factory=available_cores, description="Torch intra-op threads")
    max_input_tokens: int = Field(2048, description="Largest prompt accepted, in tokens")
    max_total_tokens: int = Field(4096, description="Prompt + new tokens limit")
    max_new_tokens_default: int = Field(20, description="max_new_tokens when a request gives none")
    max_concurrent_requests: int = Field(128, description="Beyond this, 429 overloaded")
    max_batch_size: int = Field(32, description="Sequences decoded together in one step")
    max_stop_sequences: int = Field(4, description="Most stop sequences per request")
    max_top_n_tokens: int = Field(5, description="Most alternatives per token")
    max_client_batch_size: int = Field(8, description="Most prompts in one request")
    max_body_bytes: int = Field(2_000_000, description="Largest request body")
    kv_cache_mb: float | None = Field(
        None,
        description="KV pool size in MiB (prefix cache included); default: a quarter of free "
        "memory, at most what max_batch_size sequences of max_total_tokens need",
    )
    kv_dtype: str = Field("auto", description="KV cache dtype: auto (the model's) | fp32 | bf16")
    kernel_isa: str = Field(
        "auto",
        description="Native CPU kernels' instruction set: auto (the best this CPU runs) | "
        "amx | avx512vnni | avx512 | avx2 | c (a lower one runs what an older CPU would, e.g. to "
        "benchmark it)",
    )
    prefix_caching: bool = Field(True, description="Share prompt prefixes' KV between requests")
    compile: bool = Field(
        False, description="torch.compile the model (needs a C++ compiler; compiles at start)"
    )
    cuda_graphs: bool = Field(
        True,
        description="On CUDA: replay steps of decodes and short chunks as CUDA graphs (off: eager)",
    )
    speculative_tokens: int = Field(
        0, ge=0, le=16, description="Prompt-lookup draft tokens verified per decode step (0: off)"
    )
    speculative_max_batch: int = Field(
        1, ge=1, description="Draft only while at most this many sequences decode"
    )
    response_cache_entries: int = Field(1024, description="Entries of the use_cache response cache")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Converted-model cache")
    hf_token: str | None = Field(None, description="Token for the Hugging Face hub when reachable")
    log_level: str = Field("info", description="Log level")
    chat_max_tokens_default: int = Field(
        512,
        description="max_tokens of a chat completion that gives none (capped by max_total_tokens)",
    )
    model_wait_timeout_s: float = Field(
        600.0, description="Longest a wait_for_model request waits for a loading model"
    )
    model_load_estimate_s: float = Field(
        30.0, description="estimated_time reported while a model of unknown size loads"
    )
    sse_keepalive_s: float = Field(
        15.0, description="Seconds between keep-alive comments on an idle event stream"
    )
    header_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must send a request's headers within this (slow clients)",
    )
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="A request's body must arrive within this once reading starts (408)"
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="Idle keep-alive connections are closed after this"
    )
    max_connections: int = Field(
        1024, ge=1, description="Open connections (and tasks) beyond which uvicorn answers 503"
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, in-flight requests get this long to finish"
    )

    # --- scale-out on Ray Serve (`fewshot serve --replicas N`; see fewshot.serving) ----------
    replicas: int | None = Field(
        None, description="Engine replicas on Ray Serve; unset serves in this process"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (unset: start a local Ray for the command)"
    )
    min_replicas: int | None = Field(None, description="Autoscaling: fewest replicas")
    max_replicas: int | None = Field(None, description="Autoscaling: most replicas")
    target_ongoing_requests: float | None = Field(
        None, description="Autoscaling: requests in flight per replica to aim for"
    )
    replica_cpus: float = Field(1.0, description="Ray CPUs reserved by each replica")
    router: Literal["prefix", "default"] = Field(
        "prefix", description="Replica routing: prefix (affinity) | default (Ray's)"
    )
    affinity_block_chars: int = Field(256, description="Prompt characters per routing block")
    affinity_max_blocks: int = Field(16, description="Prompt blocks the router looks at")
    affinity_imbalance: int = Field(
        4, description="Extra requests in flight a prefix's replica may have before spilling"
    )
    ray_health_timeout_s: float = Field(
        5.0, description="Longest /health (and each replica of /info, /metrics) may wait"
    )
    drain_timeout_s: float = Field(
        30.0, description="On shutdown, how long replicas finish requests in flight"
    )

    def all_api_keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_key_file:
            keys += [
                ln.strip() for ln in Path(self.api_key_file).read_text().splitlines() if ln.strip()
            ]
        return keys
