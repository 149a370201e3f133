#!/usr/bin/env bash
# Set up and run the whole test suite: lint, import contracts, types, then pytest (browser test in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped"
fi
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/lint-imports          # api -> engine -> models; the scheduler never imports torch
.venv/bin/mypy                  # src/fewshot/engine and src/fewshot/models (pyproject.toml)
exec .venv/bin/python -m pytest "$@"
