"""Smoke tests of the benchmark harness pieces (no timings are asserted): prompts, statistics,
machine parsing, peer discovery, the baseline server's wire format, targets and the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from fewshot.bench import baseline_server, peers, prompts, report, stats, targets
from fewshot.bench.machine import _cpuinfo
from fewshot.bench.workloads import prompts_needed


def words(text: str) -> int:
    """A stand-in token counter: whitespace-separated words."""
    return len(text.split())


def test_prompt_set_sizes_and_distinctness() -> None:
    needed = prompts_needed(rounds=2, serving_requests=5, levels=[3, 4])
    ps = prompts.build_prompt_set(
        words, needed, single_tokens=200, prefix_tokens=150, unrelated_tokens=40
    )
    assert len(ps.cold) == needed["cold"] == 5
    assert len(ps.single_queries) == needed["single_queries"]
    assert len(ps.serving_queries) == needed["serving_queries"] == 11
    assert len(ps.unrelated) == needed["unrelated"] == 15
    assert 100 <= words(ps.prefix) <= 150
    assert ps.prefix.startswith(prompts.INSTRUCTION) and ps.prefix.endswith(prompts.SEPARATOR)
    # cold prompts differ from their first line on; queries never repeat; nothing is a prefix hit
    assert len({p.splitlines()[0] for p in ps.cold}) == len(ps.cold)
    assert len(set(ps.single_queries + ps.serving_queries)) == len(
        ps.single_queries + ps.serving_queries
    )
    assert all(q.endswith("Sentiment:") for q in ps.serving_queries)
    assert len({p.split()[0:3].__str__() for p in ps.unrelated}) > 1
    assert prompts.STOP not in "".join(ps.serving_queries)


def test_stats() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([]) is None
    assert stats.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert stats.percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert stats.ratio(6.0, 3.0) == 2.0
    assert stats.ratio(1.0, 0.0) is None and stats.ratio(None, 1.0) is None


def test_cpuinfo_parsing(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    )
    model, flags = _cpuinfo(f)
    assert model == "Test CPU 9000"
    assert flags == ["avx2", "avx512f", "avx512_vnni"]


def test_peer_discovery_skips_missing_venvs(tmp_path: Path) -> None:
    assert peers.parse_peer_python(["ov=/x/bin/python"]) == {"ov": Path("/x/bin/python")}
    with pytest.raises(ValueError):
        peers.parse_peer_python(["no-equals-sign"])
    found = peers.discover(
        {"ov": tmp_path / "missing" / "python"}, ["ort", "ov-int8"], tmp_path / "home", 1
    )
    assert found.peers == []
    assert any("not found" in n for n in found.notes)
    # this very interpreter has no optimum: probed, and skipped with a note
    found = peers.discover({"self": Path(sys.executable)}, ["llamacpp"], tmp_path / "home", 1)
    if not found.peers:
        assert any("llama" in n for n in found.notes)
    assert (tmp_path / "home" / "intel" / "openvino_telemetry").read_text() == "0"


class EchoGenerator:
    """Test double of the pipeline generator: echoes what the route passed on."""

    def generate(self, prompt: str, params: dict) -> tuple[str, int, str]:
        return (
            f" {params.get('max_new_tokens')}|{','.join(baseline_server._stop_list(params))}",
            3,
            "length",
        )


def test_baseline_wire_format() -> None:
    client = TestClient(baseline_server.create_app(EchoGenerator()))  # type: ignore[arg-type]
    assert client.get("/health").status_code == 200
    body = {
        "inputs": "Q",
        "parameters": {"max_new_tokens": 5, "stop": ["###"], "return_full_text": False},
    }
    assert client.post("/models/any/id", json=body).json() == [{"generated_text": " 5|###"}]
    body["parameters"] = {"max_new_tokens": 2, "end_sequence": "\n"}
    assert client.post("/models/m", json=body).json() == [{"generated_text": "Q 2|\n"}]
    out = client.post(
        "/generate", json={"inputs": "Q", "parameters": {"max_new_tokens": 3, "details": True}}
    ).json()
    assert out["details"] == {"finish_reason": "length", "generated_tokens": 3}


def test_baseline_pipeline_stops_at_stop_string(tiny_gpt_neo_dir: Path) -> None:
    gen = baseline_server.PipelineGenerator(str(tiny_gpt_neo_dir), threads=1)
    text, n, reason = gen.generate("Hello there", {"max_new_tokens": 6, "temperature": 0})
    assert 1 <= n <= 6 and reason in ("length", "eos_token")
    # a stop string made of the first generated text stops generation right there
    first = gen.tokenizer.decode(gen.tokenizer(text)["input_ids"][:1])
    if first.strip():
        text2, n2, reason2 = gen.generate(
            "Hello there", {"max_new_tokens": 6, "stop": [first.strip()]}
        )
        assert reason2 == "stop_sequence" and n2 <= n


def _synthetic_results() -> dict:
    """A hand-made results dict with the shape runner.run produces (not measurements)."""
    single = {"ttft_s": 0.2, "decode_s_per_token": 0.005, "ttft_cached_prefix_s": 0.008}
    return {
        "meta": {
            "threads": 2,
            "rounds": 1,
            "dtypes": ["int8"],
            "quick": True,
            "command": "fewshot bench --quick",
            "sizes": {"single_new_tokens": 64, "stop": "###"},
        },  # fmt: skip
        "machine": {"cpu_model": "Test CPU", "logical_cores": 2, "flags": []},
        "bandwidth_gbps": 60.0,
        "runtime_rss": 300e6,
        "notes": ["a note"],
        "models": {
            "gpt-neo-125m": {
                "model": {
                    "n_params": 125_000_000,
                    "n_layers": 12,
                    "kv_width": 768,
                    "random_weights": True,
                },
                "prompt_tokens": {"single_prompt": 350},
                "engines": {
                    "baseline": {
                        "label": "baseline",
                        "kind": "baseline",
                        "single": {"ttft_s": 0.9, "decode_s_per_token": 0.048},
                        "serving": {"requests_per_s": 0.5, "requests": 12},
                        "throughput": {"levels": {"8": {"tokens_per_s": 50.0}}},
                    },
                    "ours-int8": {
                        "label": "ours",
                        "kind": "ours",
                        "dtype": "int8",
                        "single": single,
                        "peak_rss_single": 450e6,
                        "serving": {"requests_per_s": 60.0, "requests": 96, "replies_with_stop": 0},
                        "throughput": {"levels": {"8": {"tokens_per_s": 900.0}}},
                    },
                    "peer-ov-int8": {
                        "label": "OpenVINO int8",
                        "kind": "peer",
                        "ttft_s": 0.4,
                        "decode_s_per_token": 0.0136,
                        "peak_rss": 2.7e9,
                        "serving": {"requests_per_s": 3.0, "requests": 96},
                    },
                    "ours-fp32": {
                        "label": "ours fp32",
                        "kind": "ours",
                        "error": "Boom:\nline two | pipe",
                    },
                },  # fmt: skip
                "probe": {
                    "dtype": "int8",
                    "decode_s_per_token": 0.0045,
                    "ttft_cached_prefix_s": 0.007,
                    "cached_chunk_phases": [
                        {
                            "seconds": {"attention": 0.001, "q/k/v projection": 0.003},
                            "calls": 1,
                            "rows": 30,
                        },
                        None,  # a round where the native layers did not run
                    ],
                    "profile": {
                        "steps": 4,
                        "context_tokens": 350,
                        "forward_s_per_step": 0.004,
                        "native_phases": {
                            "seconds": {"attention": 0.002, "q/k/v projection": 0.01},
                            "calls": 4,
                            "rows": 4,
                        },
                        "torch_threads": 2,
                        "profiled_self_cpu_s": 0.02,
                        "top_ops": [
                            {"op": "aten::mm", "calls": 4, "self_cpu_ms": 10.0, "share": 0.5}
                        ],
                    },
                },  # fmt: skip
            }
        },
    }


def test_batch1_targets_use_our_fastest_decoder() -> None:
    engines = {
        "ours-bf16": {"single": {"decode_s_per_token": 0.017}},
        "ours-int8": {"single": {"decode_s_per_token": 0.010}},
        "ours-fp32": {"error": "Boom"},
        "baseline": {"single": {"decode_s_per_token": 0.001}},  # not ours
    }
    assert targets.fastest_decoder(engines, "ours-bf16") == "ours-int8"
    assert targets.fastest_decoder({"ours-fp32": {"error": "x"}}, "ours-fp32") == "ours-fp32"


def test_targets_and_report(tmp_path: Path) -> None:
    results = _synthetic_results()
    judged = {t.name.split(":")[0]: t for t in targets.judge(results)}
    assert judged["few-shot serving on gpt-neo-125m"].met is True  # 120x
    assert judged["few-shot serving"].met is True  # 10x the best peer
    assert judged["batch-1 decode faster than OpenVINO int8 (ours-int8)"].met is True
    floor = judged["batch-1 decode within 2x of the int8 bandwidth floor (ours-int8)"]
    assert floor.met is False and "missed by" in floor.detail  # 5 ms vs 2 * 2.1 ms
    assert judged["time to first token with a cached ~300-token prefix"].met is True  # 1.6 steps
    written = report.write(results, tmp_path)
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "Test CPU" in md and "**missed**" in md and "aten::mm" in md
    assert "Boom: line two / pipe" in md  # errors flattened into table-safe text
    # the native layers' parts per decode step (ms, share of the 4 ms step) and per chunk
    assert "| attention | 0.5 ms | 12% | 1.0 ms | 14% |" in md
    assert "| q/k/v projection | 2.5 ms | 62% | 3.0 ms | 43% |" in md
    assert (
        "| outside the layers (embedding, head, token choice, Python) | 1.0 ms | 25% | 3.0 ms" in md
    )
    assert "(30 new tokens in one chunk" in md
    assert (tmp_path / "docs" / "bench.png").stat().st_size > 0 and len(written) == 2
    json.dumps(results)  # results stay JSON-serialisable


def test_a_gpu_run_is_not_judged_against_the_cpus_floors(tmp_path: Path) -> None:
    """With --device cuda both servers ran on a GPU: the report names it, and the targets set
    by the host's memory bandwidth are not measured (they would judge a GPU by a CPU)."""
    results = _synthetic_results()
    results["meta"]["device"] = "cuda"
    results["machine"]["gpu"] = "Test GPU"
    judged = {t.name.split(":")[0]: t for t in targets.judge(results)}
    floor = judged["batch-1 decode within 2x of the int8 bandwidth floor (ours-int8)"]
    assert floor.met is None and floor.measured == "-"
    assert judged["few-shot serving on gpt-neo-125m"].met is True  # ratios still judged
    report.write(results, tmp_path)
    assert "- GPU: Test GPU (`--device cuda`)" in (tmp_path / "BENCHMARKS.md").read_text()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--device", "tpu"], "device 'tpu'"),
        (["--device", "cuda", "--dtype", "int8"], "int8 weights run on the CPU only"),
        pytest.param(
            ["--device", "cuda", "--dtype", "auto"],
            "torch sees no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here"),
        ),
    ],
)
def test_bench_refuses_a_device_it_cannot_run(flags, says, tmp_path: Path, capsys) -> None:
    from fewshot.cli import main

    assert main(["bench", "--models", "gpt-neo-tiny", "--work", str(tmp_path), *flags]) == 2
    assert says in capsys.readouterr().err


def test_server_command_lines_carry_the_device(tmp_path: Path) -> None:
    from fewshot.bench.servers import baseline_argv, ours_argv

    assert baseline_argv(tmp_path, 1, 2, "cuda")[-2:] == ["--device", "cuda"]
    assert ours_argv("m", "a", 1, 2, "bf16", "cuda:1")[-2:] == ["--device", "cuda:1"]
    assert ours_argv("m", "a", 1, 2, "int8")[-2:] == ["--device", "cpu"]
