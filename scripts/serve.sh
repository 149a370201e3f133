#!/usr/bin/env bash
# Set up and start the server on the offline demo model (Gemma 3 270M) at http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fewshot serve "$@"
