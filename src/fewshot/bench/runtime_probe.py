"""What the `fewshot serve` process costs in memory before any weights, stage by stage.

Run in a fresh interpreter (the benchmark starts it as a subprocess):

  python -m fewshot.bench.runtime_probe

Stages, in the order a server meets them: the interpreter; the CLI parser and the FastAPI app
as `fewshot serve` builds them (no model loaded yet); torch, which the first model load imports;
the engine and model-loading modules with transformers' config classes, which a load also
imports. Prints one JSON object: each stage's resident set, the peak (VmHWM) at the end, and
which heavy optional modules (classifier stack, plotting) got imported on the way.

Memory is read from /proc/self/status. `ru_maxrss` is not used: Linux carries it over an
exec, so a child started by a process that once held a large tensor reports the parent's peak.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

# imported only when a feature that needs them is used; never by serving text generation
HEAVY_MODULES = ("sklearn", "scipy", "matplotlib", "sentence_transformers", "pandas")


def memory_status() -> dict[str, int]:
    """This process's VmRSS and VmHWM in bytes (empty where /proc is not available)."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _server_app() -> None:
    from fewshot.api.app import create_app
    from fewshot.cli import build_parser
    from fewshot.cli.serve import settings_from_args

    args = build_parser().parse_args(["serve", "--model", "probe=/nonexistent"])
    create_app(settings_from_args(args))


def _torch() -> None:
    import torch

    torch.zeros(1)


# what loading a model imports besides torch (transformers: its config classes only)
MODEL_LOADING_MODULES = (
    "fewshot.engine.llm",
    "fewshot.models.loading",
    "fewshot.models.gguf_loader",
    "transformers.models.auto.configuration_auto",
    "transformers.models.gemma3.configuration_gemma3",
)


def _model_loading() -> None:
    for name in MODEL_LOADING_MODULES:
        importlib.import_module(name)


STAGES = (
    ("server app (CLI parser, FastAPI app, no model)", _server_app),
    ("torch", _torch),
    ("engine, model loading, transformers configs", _model_loading),
)


def measure() -> dict:
    stages = [{"stage": "python interpreter", "rss": memory_status().get("VmRSS"), "s": 0.0}]
    for name, step in STAGES:
        t0 = time.perf_counter()
        step()
        stages.append(
            {"stage": name, "rss": memory_status().get("VmRSS"), "s": time.perf_counter() - t0}
        )
    loaded = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    return {"stages": stages, "rss": memory_status().get("VmHWM"), "heavy_modules": loaded}


def describe_stages(runtime: dict | None) -> str:
    """`; python interpreter 12 MB, server app (...) +65 MB, ...`: what each stage added."""
    parts, previous = [], 0
    for stage in (runtime or {}).get("stages") or []:
        rss = stage.get("rss") or 0
        parts.append(f"{stage['stage']} {'+' if previous else ''}{(rss - previous) / 1e6:,.0f} MB")
        previous = rss
    return "; " + ", ".join(parts) if parts else ""


def main() -> int:
    print(json.dumps(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
