"""Benchmark harness: our server against a plain transformers server and optional peer engines.

`fewshot bench` (see `fewshot.cli.bench`) drives it: `runner` builds the models (`models`) and
prompts (`prompts`), starts each server as a subprocess (`servers`, `baseline_server`), runs the
workloads over HTTP (`workloads`, `http_client`), runs peers in their own venvs (`peers`,
`peer_runner`) and writes BENCHMARKS.md and a plot (`report`).
"""
