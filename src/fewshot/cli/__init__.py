"""The `fewshot` command line: one small module per subcommand, each with add_parser() and run()."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module (under fewshot.cli) exposing add_parser(subparsers) and run(args) -> int
COMMANDS = {
    "serve": "serve",
    "generate": "generate",
    "eval": "evaluate",
    "classify": "classify",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewshot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"fewshot.cli.{module}")
        p = mod.add_parser(sub, name)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fewshot.settings import configure_openmp

    configure_openmp()  # before any subcommand imports torch
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
