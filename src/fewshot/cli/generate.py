"""`fewshot generate`: one generation from the command line, through the engine.

    fewshot generate --model gemma-3-270m "Translate to French: cheese =>" --max-new-tokens 8 --stop "\\n"
    fewshot generate --model ./my-model "Once upon a time" --temperature 0.8 --seed 1 --stream

Greedy unless --temperature is above 0. Prints the generated text only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fewshot.settings import DEFAULT_MODEL, Settings


def add_parser(sub: Any, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help="Generate text from a prompt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="The prompt")
    p.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help="Demo name, directory, hub id or GGUF file (default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=64, help="Tokens to generate (default: %(default)s)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0 (default) is greedy; above 0 samples"
    )
    p.add_argument("--top-k", type=int, default=None, help="Keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="Nucleus sampling mass")
    p.add_argument("--repetition-penalty", type=float, default=None, help="1.0 means none")
    p.add_argument("--seed", type=int, default=None, help="Random seed for sampling")
    p.add_argument(
        "--stop", action="append", default=[], help="Stop sequence, trimmed (repeatable)"
    )
    p.add_argument("--stream", action="store_true", help="Print tokens as they are generated")
    p.add_argument("--dtype", default=None, help="Weights: auto | fp32 | bf16 | int8")
    p.add_argument("--threads", type=int, default=None, help="Torch threads")
    return p


def sampling_params(args: argparse.Namespace) -> Any:
    from fewshot.engine.types import SamplingParams

    return SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        do_sample=args.temperature > 0,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=list(args.stop),
        include_stop=False,
    ).validate()


def run(args: argparse.Namespace) -> int:
    from fewshot.engine.llm import LLM
    from fewshot.engine.types import ParameterError

    settings = Settings()
    try:
        params = sampling_params(args)
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    llm = LLM.load(
        args.model,
        dtype=args.dtype or settings.dtype,
        threads=args.threads or settings.threads,
        cache_dir=settings.cache_dir,
        hf_token=settings.hf_token,
    )
    try:
        if args.stream:
            for ev in llm.stream(args.prompt, params):
                if ev.token is not None:
                    sys.stdout.write(ev.token.text)
                    sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            print(llm.generate(args.prompt, params).text)
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        llm.close()
    return 0
