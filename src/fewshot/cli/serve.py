"""`fewshot serve`: the HTTP API (Hugging Face Inference API, TGI and OpenAI formats) on uvicorn.

    fewshot serve                                   # the offline demo model gemma-3-270m
    fewshot serve --model EleutherAI/gpt-neo-125M --model small=/models/tiny --port 8080
    fewshot serve --api-key KEY --max-concurrent-requests 16
    fewshot serve --model ./tiny --replicas 2          # 2 replicas on Ray Serve (local Ray)
    fewshot serve --replicas 4 --ray-address HEAD:6379  # on an existing Ray cluster

Every flag maps to a `Settings` field (environment: FEWSHOT_<FIELD>); flags win.
"""

from __future__ import annotations

import argparse
import logging
import typing
from pathlib import Path
from typing import Any

from fewshot.settings import Settings, configure_compile_cache

# fields with a flag of their own above, or kept out of the command line (secrets: environment)
_CUSTOM = {"models", "api_keys", "hf_token"}


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse type (or action) for a Settings field annotation: X, X | None, bool,
    Literal[...] (its values are the choices)."""
    if typing.get_origin(annotation) is typing.Literal:
        return str, {"choices": list(typing.get_args(annotation))}
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    kind = args[0] if args else annotation
    if kind is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if kind in (int, float, str, Path):
        return kind, {}
    raise TypeError(f"no command-line type for {annotation!r}")


def settings_flags() -> dict[str, tuple[Any, dict[str, Any], str]]:
    """Flag per Settings field: dest -> (type, extra argparse options, help from the field)."""
    flags = {}
    for name, field in Settings.model_fields.items():
        if name in _CUSTOM:
            continue
        kind, extra = _flag_type(field.annotation)
        flags[name] = (kind, extra, field.description or "")
    return flags


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
    for field, (kind, extra, text) in settings_flags().items():
        options = {"type": kind} if kind is not None else {}
        p.add_argument(
            "--" + field.replace("_", "-"), dest=field, default=None, help=text, **options, **extra
        )
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides = {
        f: getattr(args, f)
        for f in ("models", "api_keys", *settings_flags())
        if getattr(args, f, None) is not None
    }
    return Settings(**overrides)


def uses_ray(settings: Settings) -> bool:
    """Any replica count given: serve on Ray Serve (fewshot.serving), not in this process."""
    return any(
        getattr(settings, f) is not None for f in ("replicas", "min_replicas", "max_replicas")
    )


def run(args: argparse.Namespace) -> int:
    from fewshot.api.app import create_app
    from fewshot.api.server import run_server

    settings = settings_from_args(args)
    configure_compile_cache(settings.cache_dir)
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if uses_ray(settings):
        from fewshot.serving.launch import run as run_on_ray

        return run_on_ray(settings)
    run_server(create_app(settings), settings)
    return 0
