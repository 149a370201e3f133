#!/usr/bin/env bash
# On a machine with a CUDA GPU: the parity and exactness tests' CUDA cases, then the benchmark
# with both servers (ours and the transformers pipeline) on the GPU.
#   bash scripts/gpu_check.sh [OUT_DIR]     (default: ./gpu-check)
# Uses the current environment's python (PYTHON=...), with fewshot importable (installed, or
# PYTHONPATH=src); writes tests.log, bench.log, BENCHMARKS.md, docs/bench.png and raw.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-gpu-check}")"
py="${PYTHON:-python3}"
mkdir -p "$out"
"$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" || exit 2
# every test parametrised over the device, on CUDA (the CPU cases run in the normal suite)
"$py" -m pytest -q -p no:cacheprovider -k cuda \
  tests/models/test_parity.py tests/engine/test_exactness.py tests/engine/test_speculation.py \
  2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}
work="$(mktemp -d)"
"$py" -c "import sys; from fewshot.cli import main; sys.exit(main())" bench \
  --models gpt-neo-125m --device cuda --dtype auto,fp32 --rounds "${ROUNDS:-2}" \
  --peers "" --no-curves --no-profile --out "$out" --work "$work" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
cp "$work"/results/bench-*.json "$out/raw.json" 2>/dev/null
exit $((tests || bench))
