#!/usr/bin/env bash
# Batch-1 Gemma 3 270M, ours (in-process engine probe, int8 and fp32) against llama.cpp on the
# same GGUF file, interleaved (ours, ours, llama.cpp per thread count and repetition), so that a
# busy host slows every engine alike. No HTTP: the engines alone. One JSON line per run.
#
#   fewshot bench --models gemma-3-270m --llamacpp-wheels DIR --work WORK   # once: models,
#                                                 # prompts and the llama.cpp venv under WORK
#   scripts/bench_llamacpp.sh WORK [REPS] [THREAD COUNTS...]    # e.g. WORK 3 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE  # what `fewshot serve` and the benchmark's peers run with
work=${1:?usage: $0 WORK [REPS] [THREADS...]}
reps=${2:-2}
shift $(($# < 2 ? $# : 2))
threads=${*:-1 2}
python=${PYTHON:-.venv/bin/python}
peer=$(ls -d "$work"/peers/llamacpp-*/bin/python | head -1)
prompts=$work/prompts/gemma-3-270m.json
gguf=$(ls "$work"/models/*.gguf | head -1)
for rep in $(seq "$reps"); do
  for th in $threads; do
    for engine in int8 fp32 llamacpp; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      if [ "$engine" = llamacpp ]; then
        result=$(OMP_NUM_THREADS=$th "$peer" src/fewshot/bench/peer_runner.py --backend llamacpp \
          --model "$gguf" --work "$work/peers" --prompts "$prompts" --threads "$th" --rounds 2 \
          --new-tokens 32 2>/dev/null | tail -1)
      else
        result=$("$python" -m fewshot.bench.engine_probe --model gemma-3-270m --dtype "$engine" \
          --threads "$th" --prompts "$prompts" --rounds 2 --new-tokens 32 --profile-tokens 0 \
          2>/dev/null | tail -1)
      fi
      echo "{\"rep\": $rep, \"threads\": $th, \"engine\": \"$engine\", \"load_before\": $load, \"result\": ${result:-null}}"
    done
  done
done
