"""What a benchmark run does: models, rounds, threads, request counts per model and side.

The full run is sized to finish in about 25 minutes on 2 cores: the transformers baseline is
slow (about 2 s per few-shot request at 125M, 45 s per 64-token request at 1.3B), so it gets
fewer requests than our server, and at 1.3B only the single-request workload.

The two cost curves ("scaling": tokens/s against concurrent clients; "prompt_length": time to
first token against prompt length) are bounded per point in requests and in time; the baseline
serves one request at a time, so its concurrency list stops at 8 by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

WORKLOADS = ("single", "serving", "throughput", "scaling", "prompt_length")
CURVES = ("scaling", "prompt_length")


@dataclass
class SidePlan:
    """One side's (baseline or ours) workloads and sizes on one model."""

    workloads: tuple[str, ...] = WORKLOADS
    serving_requests: int = 96  # per round
    throughput_levels: tuple[int, ...] = (8, 32)


@dataclass
class ModelPlan:
    baseline: SidePlan
    ours: SidePlan
    peers: bool = False  # run the optional peers on this model


FULL_PLANS: dict[str, ModelPlan] = {
    "gpt-neo-125m": ModelPlan(
        baseline=SidePlan(serving_requests=12, throughput_levels=(8,)),
        ours=SidePlan(serving_requests=96, throughput_levels=(8, 32)),
        peers=True,
    ),
    "pythia-160m": ModelPlan(
        baseline=SidePlan(serving_requests=12, throughput_levels=(8,)),
        ours=SidePlan(serving_requests=96, throughput_levels=(8, 32)),
    ),
    "gpt-neo-1.3b": ModelPlan(
        baseline=SidePlan(workloads=("single",), serving_requests=0, throughput_levels=()),
        # no curves: without the baseline's there is nothing to compare them with
        ours=SidePlan(
            workloads=("single", "serving", "throughput"),
            serving_requests=16,
            throughput_levels=(8,),
        ),
    ),
    "gemma-3-270m": ModelPlan(
        baseline=SidePlan(
            workloads=("single", "serving", *CURVES), serving_requests=8, throughput_levels=()
        ),
        ours=SidePlan(serving_requests=48, throughput_levels=(8, 32)),
        peers=True,
    ),
}
QUICK_PLAN = ModelPlan(
    baseline=SidePlan(serving_requests=8, throughput_levels=(8,)),
    ours=SidePlan(serving_requests=16, throughput_levels=(8,)),
    peers=True,
)
DEFAULT_MODELS = ["gpt-neo-125m", "pythia-160m", "gpt-neo-1.3b", "gemma-3-270m"]
QUICK_MODELS = ["gpt-neo-tiny"]


@dataclass
class BenchConfig:
    """Everything one run needs; `fewshot bench` builds it from its flags."""

    models: list[str]
    rounds: int
    threads: int
    dtypes: list[str]  # our server's weights; the first is the headline
    out: Path  # BENCHMARKS.md and docs/bench*.png go here
    work: Path  # model dirs, logs, exports, raw results (outside the repository)
    quick: bool = False
    peer_pythons: dict[str, Path] = field(default_factory=dict)
    peer_backends: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"  # where both servers run the model: cpu | cuda | cuda:N
    single_tokens: int = 350
    prefix_tokens: int = 300
    single_new_tokens: int = 64
    serving_new_tokens: int = 25
    concurrency: int = 8
    throughput_new_tokens: int = 32
    unrelated_tokens: int = 96
    bandwidth_mb: int = 1024
    stop: str = "###"
    server_timeout_s: float = 900.0
    peer_timeout_s: float = 1200.0
    profile: bool = True
    command: str = ""
    curves: bool = True  # run the two cost curves where the model's plan has them
    curve_concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)  # ours
    curve_baseline_concurrency: tuple[int, ...] = (1, 2, 4, 8)  # it serialises requests
    curve_lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048)  # capped at max positions - 1
    curve_new_tokens: int = 32  # per request of the scaling curve, no stop string
    curve_requests_min: int = 4  # a scaling point sends max(C, this) requests per round
    curve_rounds: int = 1  # rounds of both curves (about 4 minutes at 125M, int8 and fp32)
    curve_point_s: float = 30.0  # no new request after this; a slower point ends its curve

    def workloads(self, side: SidePlan) -> tuple[str, ...]:
        """The side's workloads in this run (the curves dropped when they are off)."""
        return tuple(w for w in side.workloads if self.curves or w not in CURVES)

    def plan(self, model: str) -> ModelPlan:
        if self.quick:
            return QUICK_PLAN
        return FULL_PLANS.get(model, FULL_PLANS["gpt-neo-125m"])

    @classmethod
    def quick_sizes(cls, **kwargs: object) -> BenchConfig:
        """A smoke run: tiny model, short prompts, few tokens, one round."""
        sizes: dict[str, object] = {
            "single_tokens": 120,
            "prefix_tokens": 100,
            "single_new_tokens": 16,
            "serving_new_tokens": 8,
            "throughput_new_tokens": 8,
            "unrelated_tokens": 40,
            "bandwidth_mb": 256,
            "curve_concurrency": (1, 4),
            "curve_baseline_concurrency": (1, 4),
            "curve_lengths": (64, 256),
            "curve_new_tokens": 8,
            "curve_requests_min": 2,
            "quick": True,
        }
        sizes.update(kwargs)
        return cls(**sizes)  # type: ignore[arg-type]
