"""Measure one peer engine in its own venv; print one JSON object on stdout.

Run with a peer venv's python (standard library plus that peer's packages only; nothing from
fewshot is imported):

  python peer_runner.py --backend ov-int8 --model DIR --work DIR --prompts FILE.json --threads 2

Backends: `ort` (ONNX Runtime through optimum's ORTModelForCausalLM), `ov` / `ov-int8`
(OpenVINO through optimum-intel's OVModelForCausalLM, fp32 or 8-bit weights) and `llamacpp`
(llama-cpp-python on a GGUF file). Exported models are kept under --work and reused.

The prompts file holds {"cold": [...], "prefix": str, "serving_queries": [...]} as the
benchmark sends to the servers, and "single_queries" when the cached-prefix latency is wanted.
Single request: time to first token on a fresh prompt (one new token), decode time per token
from a fresh prompt with --new-tokens tokens, EOS suppressed (and that request's end-to-end
tokens/s: the single-stream rate), and the time to first token of prefix + query right after
another query on the same prefix (llama.cpp reuses the KV of a matching prompt prefix; the
optimum peers recompute it).
Serving: --serving-requests prefix+query prompts, greedy, at most --serving-new-tokens tokens,
stopping at --stop, in batches of --batch (the best a one-process peer can do for concurrent
clients). Peak memory is the process's VmHWM (not ru_maxrss, which Linux carries over an exec
from the benchmark process that started this one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _peak_rss() -> int | None:
    """This process's peak resident set (VmHWM) in bytes, where Linux reports it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _median(values: list[float]) -> float | None:
    vals = sorted(values)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


class OptimumPeer:
    """ORT or OpenVINO through optimum, generation with transformers' `generate`."""

    def __init__(self, backend: str, model_dir: str, work: Path, threads: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        export_dir = work / f"{Path(model_dir).name}-{backend}"
        fresh = not (export_dir / "config.json").exists()
        if backend == "ort":
            import onnxruntime
            from optimum.onnxruntime import ORTModelForCausalLM

            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            src = model_dir if fresh else str(export_dir)
            self.model = ORTModelForCausalLM.from_pretrained(
                src, export=fresh, session_options=opts, use_cache=True, local_files_only=True
            )
        else:
            from optimum.intel import OVModelForCausalLM

            ov_config = {
                "INFERENCE_NUM_THREADS": str(threads),
                "PERFORMANCE_HINT": "LATENCY",
                "CACHE_DIR": "",
            }
            kwargs: dict[str, Any] = {
                "ov_config": ov_config,
                "use_cache": True,
                "local_files_only": True,
            }
            if fresh:
                if backend == "ov-int8":
                    from optimum.intel import OVWeightQuantizationConfig

                    kwargs["quantization_config"] = OVWeightQuantizationConfig(bits=8)
                else:
                    kwargs["load_in_8bit"] = False
                self.model = OVModelForCausalLM.from_pretrained(model_dir, export=True, **kwargs)
            else:
                self.model = OVModelForCausalLM.from_pretrained(str(export_dir), **kwargs)
        if fresh:
            self.model.save_pretrained(str(export_dir))
            self.tokenizer.save_pretrained(str(export_dir))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"

    def serving_mode(self, batch: int) -> str:
        return f"batches of {batch}"

    def generate(self, prompts: list[str], new_tokens: int, fixed: bool, stop: str | None) -> int:
        """Generate for a batch; return the generated token count of the batch."""
        enc = self.tokenizer(prompts, return_tensors="pt", padding=len(prompts) > 1)
        kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "do_sample": False}
        if fixed:
            kwargs["min_new_tokens"] = new_tokens
        if stop:
            kwargs["stop_strings"] = [stop]
            kwargs["tokenizer"] = self.tokenizer
        out = self.model.generate(**enc, **kwargs)
        return int((out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0])


class LlamaCppPeer:
    """llama-cpp-python on a GGUF file."""

    def __init__(self, model_path: str, threads: int) -> None:
        from llama_cpp import Llama

        # n_threads_batch (prompt processing) defaults to every core: pin it as well
        self.llm = Llama(
            model_path=model_path,
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=2048,
            verbose=False,
        )
        self.eos = self.llm.token_eos()

    def serving_mode(self, batch: int) -> str:
        del batch  # one sequence at a time; the shared prefix's KV is reused between requests
        return "one request at a time, shared prefix's KV reused"

    def generate(self, prompts: list[str], new_tokens: int, fixed: bool, stop: str | None) -> int:
        """Generate for each prompt in turn; return the generated token count."""
        total = 0
        for prompt in prompts:
            kwargs: dict[str, Any] = {"max_tokens": new_tokens, "temperature": 0.0}
            if fixed:
                kwargs["logit_bias"] = {self.eos: -1e9}
            if stop:
                kwargs["stop"] = [stop]
            out = self.llm.create_completion(prompt, **kwargs)
            total += int(out["usage"]["completion_tokens"])
        return total


def _timed(peer: Any, prompt: str, new_tokens: int) -> tuple[float, int]:
    """Seconds for one greedy request of exactly `new_tokens` tokens, and the tokens made."""
    t = time.perf_counter()
    n = peer.generate([prompt], new_tokens, fixed=True, stop=None)
    return time.perf_counter() - t, n


def run(args: argparse.Namespace) -> dict[str, Any]:
    prompts = json.loads(Path(args.prompts).read_text())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.backend == "llamacpp":
        peer: Any = LlamaCppPeer(args.model, args.threads)
    else:
        peer = OptimumPeer(args.backend, args.model, work, args.threads)
    load_s = time.perf_counter() - t0
    rss_loaded = _peak_rss()

    cold, queries = prompts["cold"], prompts.get("single_queries") or []
    peer.generate([cold[0]], 4, fixed=True, stop=None)  # warm-up
    ttft, decode, stream, cached = [], [], [], []
    for r in range(args.rounds):
        first = _timed(peer, cold[1 + 2 * r], 1)[0]
        full, n = _timed(peer, cold[2 + 2 * r], args.new_tokens)
        ttft.append(first)
        stream.append(n / full)
        if n > 1:
            decode.append((full - first) / (n - 1))
        if len(queries) > 2 + 2 * r:  # prefix + query right after another query on the prefix
            _timed(peer, prompts["prefix"] + queries[1 + 2 * r], 1)
            cached.append(_timed(peer, prompts["prefix"] + queries[2 + 2 * r], 1)[0])
    result: dict[str, Any] = {
        "backend": args.backend,
        "load_s": load_s,
        "ttft_s": _median(ttft),
        "decode_s_per_token": _median(decode),
        "ttft_cached_prefix_s": _median(cached),
        "single_stream_tokens_per_s": _median(stream),
        "rounds": {"ttft_s": ttft, "decode_s_per_token": decode, "ttft_cached_prefix_s": cached},
        "peak_rss_after_load": rss_loaded,
    }
    if args.serving_requests > 0:
        prefix, queries = prompts["prefix"], prompts["serving_queries"][: args.serving_requests]
        batch = [prefix + q for q in queries]
        t, generated = time.perf_counter(), 0
        for i in range(0, len(batch), args.batch):
            generated += peer.generate(
                batch[i : i + args.batch], args.serving_new_tokens, fixed=False, stop=args.stop
            )
        wall = time.perf_counter() - t
        result["serving"] = {
            "requests_per_s": len(batch) / wall,
            "generated_tokens_per_s": generated / wall,
            "requests": len(batch),
            "batch": args.batch,
            "mode": peer.serving_mode(args.batch),
            "new_tokens": args.serving_new_tokens,
        }
    result["peak_rss"] = _peak_rss()
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", required=True, choices=["ort", "ov", "ov-int8", "llamacpp"])
    parser.add_argument(
        "--model", required=True, help="transformers directory, or GGUF file for llamacpp"
    )
    parser.add_argument("--work", required=True, help="directory for exported models")
    parser.add_argument("--prompts", required=True, help="JSON file with the benchmark's prompts")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--serving-requests", type=int, default=0)
    parser.add_argument("--serving-new-tokens", type=int, default=25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--stop", default="###")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except Exception as exc:  # reported to the harness, which notes the peer as failed
        print(json.dumps({"backend": args.backend, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
