"""`fewshot serve` flags -> Settings, and `fewshot generate` through the engine."""

from __future__ import annotations

import pytest

from fewshot.cli import build_parser, main
from fewshot.cli.serve import settings_from_args
from fewshot.settings import DEFAULT_MODEL


def test_serve_flags_map_to_settings(tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k2\n")
    args = build_parser().parse_args(
        [
            "serve",
            "--model", "a=/models/a",
            "--model", "EleutherAI/gpt-neo-125M",
            "--port", "9001",
            "--api-key", "k1",
            "--api-key-file", str(keys),
            "--max-concurrent-requests", "3",
            "--max-input-tokens", "100",
            "--max-body-bytes", "1000",
        ]
    )  # fmt: skip
    s = settings_from_args(args)
    assert s.models == ["a=/models/a", "EleutherAI/gpt-neo-125M"]
    assert s.port == 9001 and s.max_concurrent_requests == 3 and s.max_input_tokens == 100
    assert s.max_body_bytes == 1000 and s.all_api_keys() == ["k1", "k2"]


def test_serve_defaults_to_the_demo_model() -> None:
    s = settings_from_args(build_parser().parse_args(["serve"]))
    assert s.models == [DEFAULT_MODEL] and s.host == "127.0.0.1" and s.api_keys == []


def test_generate(tiny_gpt_neo_dir, capsys) -> None:
    argv = ["generate", "--model", str(tiny_gpt_neo_dir), "Hello", "--max-new-tokens", "5",
            "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    greedy = capsys.readouterr().out
    assert greedy.strip()
    assert main([*argv, "--stream"]) == 0
    assert capsys.readouterr().out == greedy
    assert main([*argv, "--temperature", "0.8", "--seed", "3", "--top-k", "5", "--stop", "x"]) == 0


def test_generate_bad_parameter(tiny_gpt_neo_dir, capsys) -> None:
    assert main(["generate", "--model", str(tiny_gpt_neo_dir), "Hi", "--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_generate_help() -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
