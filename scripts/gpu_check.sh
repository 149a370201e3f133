#!/usr/bin/env bash
# On a machine with a CUDA GPU: the parity and exactness tests' CUDA cases, then the benchmark
# with both servers (ours and the transformers pipeline) on the GPU, twice: our decode steps as
# CUDA graphs (the default) and eager (FEWSHOT_CUDA_GRAPHS=false).
#   bash scripts/gpu_check.sh [OUT_DIR]     (default: ./gpu-check)
# Uses the current environment's python (PYTHON=...), with fewshot importable (installed, or
# PYTHONPATH=src); writes tests.log and, per variant, bench-<variant>.md and .json (raw).
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
status=${PIPESTATUS[0]}
for variant in graphs eager; do
  work="$(mktemp -d)"
  graphs=$([ "$variant" = graphs ] && echo true || echo false)
  # the eager run also profiles an eager step (torch ops' CPU time: what launches cost there)
  extra=()
  [ "$variant" = graphs ] && extra+=(--no-profile)
  FEWSHOT_CUDA_GRAPHS=$graphs "$py" -c "import sys; from fewshot.cli import main; sys.exit(main())" \
    bench --models gpt-neo-125m --device cuda --dtype "${DTYPES:-auto}" --rounds "${ROUNDS:-2}" \
    --peers "" --no-curves ${extra[@]+"${extra[@]}"} --out "$work/report" --work "$work" 2>&1 | tail -n 30
  status=$((status || PIPESTATUS[0]))
  cp "$work/report/BENCHMARKS.md" "$out/bench-$variant.md"
  cp "$work"/results/bench-*.json "$out/bench-$variant.json"
done
exit "$status"
