"""`fewshot serve`: the HTTP API (Hugging Face Inference API, TGI and OpenAI formats) on uvicorn.

    fewshot serve                                   # the offline demo model gemma-3-270m
    fewshot serve --model EleutherAI/gpt-neo-125M --model small=/models/tiny --port 8080
    fewshot serve --api-key KEY --max-concurrent-requests 16

Every flag maps to a `Settings` field (environment: FEWSHOT_<FIELD>); flags win.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from fewshot.settings import Settings

# flag dest -> (Settings field, type, help); the help defaults come from Settings
_FLAGS: dict[str, tuple[type, str]] = {
    "host": (str, "Address to bind"),
    "port": (int, "Port to bind"),
    "api_key_file": (Path, "File with one API key per line"),
    "dtype": (str, "Weights: auto | fp32 | bf16 | int8"),
    "threads": (int, "Torch threads of the engine"),
    "max_input_tokens": (int, "Largest prompt, in tokens"),
    "max_total_tokens": (int, "Prompt + new tokens limit"),
    "max_new_tokens_default": (int, "max_new_tokens when a request gives none"),
    "chat_max_tokens_default": (int, "max_tokens of a chat completion that gives none"),
    "max_concurrent_requests": (int, "Requests in flight; beyond, 429 at once"),
    "max_batch_size": (int, "Sequences decoded together"),
    "max_stop_sequences": (int, "Stop sequences per request"),
    "max_top_n_tokens": (int, "Alternatives per token"),
    "max_client_batch_size": (int, "Prompts per request"),
    "max_body_bytes": (int, "Largest request body (413 beyond)"),
    "prefix_cache_mb": (int, "Prefix cache budget in MiB"),
    "response_cache_entries": (int, "Entries of the use_cache response cache"),
    "cache_dir": (Path, "Converted-model cache directory"),
    "log_level": (str, "debug | info | warning | error"),
    "header_read_timeout_s": (float, "Seconds a connection has to send a request's headers"),
    "body_read_timeout_s": (float, "Seconds a request has to send its body (408 beyond)"),
    "keep_alive_timeout_s": (float, "Idle keep-alive connections close after this"),
    "max_connections": (int, "Open connections beyond which uvicorn answers 503"),
    "shutdown_timeout_s": (float, "On SIGTERM, seconds in-flight requests get to finish"),
}


def add_parser(sub: Any, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help="Serve models over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        "-m",
        dest="models",
        action="append",
        metavar="NAME_OR_PATH",
        help="Model to serve (demo name, directory, hub id, GGUF file), or ALIAS=SOURCE; "
        "repeat for several (default: gemma-3-270m)",
    )
    p.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="Require Authorization: Bearer KEY on inference routes (repeatable)",
    )
    for field, (kind, text) in _FLAGS.items():
        p.add_argument(
            "--" + field.replace("_", "-"), dest=field, type=kind, default=None, help=text
        )
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides = {
        f: getattr(args, f)
        for f in ("models", "api_keys", *_FLAGS)
        if getattr(args, f, None) is not None
    }
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    from fewshot.api.app import create_app
    from fewshot.api.server import run_server

    settings = settings_from_args(args)
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(create_app(settings), settings)
    return 0
