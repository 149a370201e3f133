"""The llama.cpp peer without llama.cpp: which wheel a CPU gets, the command the harness runs and
how it reads the answer, the runner's measurements over a stand-in `llama_cpp`, the targets."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from fewshot.bench import peer_runner, peers, targets
from fewshot.bench.machine import cpu_flags
from fewshot.bench.models import BenchModel
from fewshot.bench.peer_setup import AVX512_BUILD_FLAGS, choose_wheel
from fewshot.settings import OPENMP_SPIN_COUNT

WHEEL = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
AVX2_HOST = {"sse4_2", "avx", "avx2", "fma", "f16c"}
AVX512_HOST = AVX2_HOST | AVX512_BUILD_FLAGS | {"amx_tile"}


def _wheels(root: Path, *variants: str) -> Path:
    for variant in variants:
        (root / variant).mkdir(parents=True)
        (root / variant / WHEEL).write_bytes(b"")
    return root


def test_wheel_follows_the_cpu_flags(tmp_path: Path) -> None:
    both = _wheels(tmp_path / "both", "avx2", "avx512")
    assert choose_wheel(both, AVX512_HOST) == both / "avx512" / WHEEL
    assert choose_wheel(both, AVX2_HOST) == both / "avx2" / WHEEL
    # AVX-512 without VNNI/BF16 (e.g. Skylake-SP) must not get the avx512 build
    assert choose_wheel(both, AVX512_HOST - {"avx512_bf16"}) == both / "avx2" / WHEEL
    only_avx2 = _wheels(tmp_path / "avx2only", "avx2")
    assert choose_wheel(only_avx2, AVX512_HOST) == only_avx2 / "avx2" / WHEEL
    with pytest.raises(RuntimeError, match="avx2"):
        choose_wheel(both, {"sse4_2", "avx"})
    with pytest.raises(FileNotFoundError):
        choose_wheel(tmp_path / "empty", AVX512_HOST)


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_vnni\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == set()


def _model(tmp_path: Path) -> BenchModel:
    return BenchModel(
        name="gemma-3-270m", hf_dir=tmp_path / "hf", ours_source="gemma-3-270m",
        random_weights=False, n_params=268_000_000, n_layers=18, kv_width=256,
        gguf_path=tmp_path / "model.gguf",
    )  # fmt: skip


def _fake_python(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return path


def test_run_peer_passes_the_gguf_and_reads_the_last_json_line(tmp_path: Path) -> None:
    echo = _fake_python(
        tmp_path / "python",
        "import json, sys, os\nprint('loading...')\n"
        "print(json.dumps({'argv': sys.argv[1:], 'omp': os.environ['OMP_NUM_THREADS'],"
        " 'spin': os.environ['GOMP_SPINCOUNT']}))",
    )
    model = _model(tmp_path)
    res = peers.run_peer(
        peers.Peer("llamacpp", echo), model, tmp_path / "prompts.json", tmp_path / "work",
        threads=2, rounds=3, new_tokens=64, serving_requests=48, serving_new_tokens=25, batch=8,
        stop="###", timeout=60, log_path=tmp_path / "log.txt",
    )  # fmt: skip
    argv = res["argv"]
    assert argv[0] == str(peers.RUNNER)
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--backend"] == "llamacpp"
    assert flags["--model"] == str(model.gguf_path)  # the GGUF file, not the converted dir
    assert (flags["--threads"], flags["--serving-requests"], flags["--stop"]) == ("2", "48", "###")
    assert (res["omp"], res["spin"]) == ("2", str(OPENMP_SPIN_COUNT))  # as our own server runs
    assert peers.applies(peers.Peer("llamacpp", echo), model)
    no_gguf = BenchModel(**{**model.__dict__, "gguf_path": None})
    assert not peers.applies(peers.Peer("llamacpp", echo), no_gguf)


def test_run_peer_reports_a_runner_without_an_answer(tmp_path: Path) -> None:
    silent = _fake_python(tmp_path / "python", "import sys\nprint('boom', file=sys.stderr)\n")
    res = peers.run_peer(
        peers.Peer("llamacpp", silent), _model(tmp_path), tmp_path / "p.json", tmp_path / "w",
        2, 1, 8, 0, 8, 1, "###", 60, tmp_path / "log.txt",
    )  # fmt: skip
    assert "error" in res and "log.txt" in res["error"]
    assert "boom" in (tmp_path / "log.txt").read_text()


class _FakeLlama:
    """Stands in for llama_cpp.Llama: records its settings, 'generates' what it is asked."""

    made: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        _FakeLlama.made.append(kwargs)

    def token_eos(self) -> int:
        return 1

    def create_completion(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        fixed = 1 in kwargs.get("logit_bias", {})
        n = kwargs["max_tokens"] if fixed else min(3, kwargs["max_tokens"])
        return {"usage": {"completion_tokens": n}}


def test_runner_measures_llamacpp_with_pinned_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=_FakeLlama))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        '{"cold": ["a", "b", "c", "d", "e"], "prefix": "P ", "single_queries": ["q0", "q1",'
        ' "q2", "q3", "q4"], "serving_queries": ["s0", "s1", "s2", "s3", "s4"]}'
    )
    argv = [
        "--backend", "llamacpp", "--model", "m.gguf", "--work", str(tmp_path / "w"),
        "--prompts", str(prompts), "--threads", "3", "--rounds", "2", "--new-tokens", "16",
        "--serving-requests", "4", "--serving-new-tokens", "8",
    ]  # fmt: skip
    res = peer_runner.run(peer_runner.build_parser().parse_args(argv))
    made = _FakeLlama.made[-1]
    assert (made["n_threads"], made["n_threads_batch"]) == (3, 3)
    assert len(res["rounds"]["ttft_s"]) == len(res["rounds"]["ttft_cached_prefix_s"]) == 2
    assert res["single_stream_tokens_per_s"] > 0 and res["decode_s_per_token"] is not None
    assert res["serving"]["requests"] == 4
    assert res["serving"]["generated_tokens_per_s"] > 0
    assert "one request at a time" in res["serving"]["mode"]


def _results(ours_step: float, ours_tps8: float, peer_step: float, peer_tps: float) -> dict:
    gemma = {
        "engines": {
            "ours-int8": {
                "kind": "ours",
                "single": {"decode_s_per_token": ours_step},
                "throughput": {"levels": {"8": {"tokens_per_s": ours_tps8}}},
            },
            "peer-llamacpp": {
                "kind": "peer",
                "decode_s_per_token": peer_step,
                "single_stream_tokens_per_s": peer_tps,
            },
        }
    }
    return {"meta": {"dtypes": ["int8"]}, "models": {"gemma-3-270m": gemma}}


def test_targets_against_llamacpp() -> None:
    missed = targets.llamacpp_targets(_results(0.056, 65.0, 0.017, 58.0), "ours-int8")
    assert [t.met for t in missed] == [False, False]
    assert "56.0 vs 17.0 ms/token" in missed[0].measured
    met = targets.llamacpp_targets(_results(0.015, 130.0, 0.017, 58.0), "ours-int8")
    assert [t.met for t in met] == [True, True]
    failed_peer = _results(0.015, 130.0, 0.017, 58.0)
    failed_peer["models"]["gemma-3-270m"]["engines"]["peer-llamacpp"]["error"] = "crashed"
    assert targets.llamacpp_targets(failed_peer, "ours-int8") == []
