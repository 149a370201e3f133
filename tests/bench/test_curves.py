"""The cost curves of `fewshot bench` without a model: the bounded workloads against the baseline
server's routes over a stand-in generator on 127.0.0.1, the closed-loop client, sized prompts,
the length cap, the option parsing, the report tables and the plot (no timings asserted)."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fewshot.bench import baseline_server, curves, plot, prompts, report, report_curves
from fewshot.bench.config import CURVES, SidePlan
from fewshot.bench.http_client import Reply, run_closed_loop
from fewshot.bench.workloads import Target
from fewshot.cli import bench as bench_cli


def words(text: str) -> int:
    """A stand-in token counter: whitespace-separated words."""
    return len(text.split())


class CountingGenerator:
    """Stand-in for the pipeline: replies with `max_new_tokens` tokens and records prompts."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    def generate(self, prompt: str, params: dict) -> tuple[str, int, str]:
        with self.lock:
            self.prompts.append(prompt)
        n = int(params.get("max_new_tokens", 1))
        return " x" * n, n, "length"


@pytest.fixture(scope="module")
def stand_in_server() -> Iterator[tuple[Target, CountingGenerator]]:
    import uvicorn

    generator = CountingGenerator()
    app = baseline_server.create_app(generator)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):  # bounded: 5 s
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Target(f"http://127.0.0.1:{port}", "m"), generator
    server.should_exit = True
    thread.join(timeout=10)


def test_closed_loop_sends_all_or_one_per_client_after_the_cap() -> None:
    def send(prompt: str) -> Reply:
        return Reply(latency=0.0, text=prompt, generated_tokens=1)

    replies, wall = run_closed_loop(send, [str(i) for i in range(10)], 3, time_cap_s=60.0)
    assert sorted(r.text for r in replies) == sorted(str(i) for i in range(10)) and wall >= 0
    replies, _ = run_closed_loop(send, [str(i) for i in range(10)], 3, time_cap_s=0.0)
    assert len(replies) == 3  # every client sends its first request, none a second


def test_scaling_curve_counts_tokens_and_ends_at_the_time_cap(stand_in_server) -> None:
    target, gen = stand_in_server
    unrelated = [f"prompt {i}" for i in range(1 + 3 + 3 + 4)]
    res = curves.scaling(target, unrelated, [4, 1, 2], 3, 5, 1, time_cap_s=60.0)
    assert list(res["levels"]) == ["1", "2", "4"] and res["skipped"] == {}
    assert [p["requests"] for p in res["levels"].values()] == [[3], [3], [4]]
    assert all(p["tokens_per_s"] > 0 for p in res["levels"].values())
    assert set(unrelated) <= set(gen.prompts)  # every prompt sent once, warm-up included
    capped = curves.scaling(target, unrelated, [1, 2, 4], 3, 5, 1, time_cap_s=0.0)
    assert list(capped["levels"]) == ["1"] and capped["levels"]["1"]["requests"] == [1]
    assert set(capped["skipped"]) == {"2", "4"} and "1-client point" in capped["skipped"]["2"]


def test_prompt_length_curve_and_its_cap(stand_in_server) -> None:
    target, _ = stand_in_server
    by_length = {n: prompts.sized_prompts(words, 3, n) for n in (64, 16, 32)}
    res = curves.prompt_length(target, by_length, rounds=2, time_cap_s=60.0)
    assert list(res["lengths"]) == ["16", "32", "64"]
    assert all(len(p["rounds"]) == 2 for p in res["lengths"].values())
    capped = curves.prompt_length(target, by_length, rounds=2, time_cap_s=0.0)
    assert list(capped["lengths"]) == ["16"] and set(capped["skipped"]) == {"32", "64"}


def test_sized_prompts_fit_and_share_no_opening() -> None:
    made = prompts.sized_prompts(words, 4, 100)
    assert all(90 <= words(p) <= 100 for p in made)
    assert len({p.split()[1] for p in made}) == 4  # "Document <n>": distinct from token 2 on
    built = curves.build_curve_prompts(words, 5, 20, [32, 64], 2, skip_unrelated=3)
    throughput_prompts = prompts.unrelated_prompts(words, 3, 20)
    assert len(built.scaling) == 5 and not set(built.scaling) & set(throughput_prompts)
    assert [len(v) for v in built.by_length.values()] == [2, 2]


def test_prompt_lengths_fit_the_model(tmp_path: Path) -> None:
    lengths, notes = curves.fit_lengths([128, 512, 2048, 4096], 2048)
    assert lengths == [128, 512, 2047] and "2048, 4096 measured as 2047" in notes[0]
    assert curves.fit_lengths([256, 128], None) == ([128, 256], [])
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    assert curves.max_positions(tmp_path) == 1024
    assert curves.max_positions(tmp_path / "missing") is None


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(), "bench")
    return parser.parse_args(["bench", *argv])


def test_curve_options(tmp_path: Path) -> None:
    def config(*argv: str):
        return bench_cli.config_from_args(_args(*argv), ["gpt-neo-tiny"], tmp_path, {})

    cfg = config("--curve-concurrency", "4,1,2", "--curve-lengths", "512,128")
    assert cfg.curves and cfg.curve_concurrency == (1, 2, 4) and cfg.curve_lengths == (128, 512)
    assert cfg.curve_baseline_concurrency == (1, 2, 4, 8)
    assert set(CURVES) <= set(cfg.workloads(SidePlan()))
    off = config("--no-curves")
    assert not set(CURVES) & set(off.workloads(SidePlan()))
    quick = config("--quick", "--curve-baseline-concurrency", "2")
    assert quick.curve_concurrency == (1, 4) and quick.curve_baseline_concurrency == (2,)
    for bad in ("0,2", "a,b", ","):
        with pytest.raises(SystemExit):
            _args("--curve-concurrency", bad)


def _results() -> dict:
    """A hand-made results dict with curves (shapes as the runner writes them, not measurements)."""

    def scaling(rates: dict[int, float], requested: list[int], skipped: dict | None = None) -> dict:
        levels = {
            str(c): {"tokens_per_s": r, "requests": [max(c, 8)], "planned_requests": max(c, 8)}
            for c, r in rates.items()
        }
        return {"levels": levels, "requested": requested, "skipped": skipped or {}}

    def lengths(ttft: dict[int, float]) -> dict:
        points = {str(n): {"ttft_s": t, "rounds": [t]} for n, t in ttft.items()}
        return {"lengths": points, "requested": sorted(ttft), "skipped": {}}

    base = {
        "label": "transformers pipeline fp32 (baseline)",
        "kind": "baseline",
        "single": {"ttft_s": 0.4, "decode_s_per_token": 0.05},
        "serving": {"requests_per_s": 0.65, "requests": 24},
        "throughput": {"levels": {"8": {"tokens_per_s": 21.0}}},
        "scaling": scaling({1: 20.0, 2: 21.0}, [1, 2]),
        "prompt_length": lengths({128: 0.2, 2047: 3.0}),
    }
    ours = {
        "label": "fewshot serve int8",
        "kind": "ours",
        "dtype": "int8",
        "single": {"ttft_s": 0.5, "decode_s_per_token": 0.039},
        "serving": {"requests_per_s": 3.04, "requests": 192},
        "throughput": {"levels": {"8": {"tokens_per_s": 67.0}}},
        "scaling": scaling({1: 25.0, 2: 40.0, 4: 84.0}, [1, 2, 4, 8], {"8": "the 4-client point took 40 s > 30 s"}),
        "prompt_length": lengths({128: 0.1, 2047: 1.5}),
    }  # fmt: skip
    return {
        "meta": {
            "threads": 2,
            "rounds": 1,
            "dtypes": ["int8"],
            "sizes": {"unrelated_prompt_tokens": 96},
            "curves": {"on": True, "concurrency": [1, 2, 4, 8], "lengths": [128, 2048]},
        },
        "machine": {"cpu_model": "Test CPU"},
        "models": {
            "gpt-neo-125m": {
                "model": {"n_params": 125_000_000, "n_layers": 12, "kv_width": 768},
                "curves": {"notes": ["prompt lengths 2048 measured as 2047 tokens"]},
                "engines": {"baseline": base, "ours-int8": ours},
            }
        },
    }


def test_curve_tables() -> None:
    model = _results()["models"]["gpt-neo-125m"]
    scaling = "\n".join(report_curves.scaling_table(model))
    assert "| 2 | 21.0 | 40.0 | 1.90x |" in scaling
    assert "| 4 | - | 84.0 | 4.00x† |" in scaling  # against the baseline at 2 clients
    assert "| 8 | - | skipped | - |" in scaling
    assert "skipped at 8 clients, as the 4-client point took 40 s" in scaling
    assert "baseline): not run at 4, 8 clients" in scaling
    lengths = "\n".join(report_curves.prompt_length_table(model))
    assert "| 2047 | 3000.0 ms | 1500.0 ms | 2.00x |" in lengths
    assert "measured as 2047" in lengths
    md = report.render(_results())
    assert "### Cost against concurrent clients" in md and "4. **Concurrent clients**" in md


def test_bar_labels_and_plot(tmp_path: Path) -> None:
    assert plot.bar_label(3.04, 0.65, True, False) == "3.04\n4.7x"
    assert plot.bar_label(38.9, 50.6, False, False) == "38.9\n1.3x"  # lower is better
    assert plot.bar_label(0.5, 0.65, True, False) == "0.5\n0.77x"
    assert plot.bar_label(1203.4, None, True, True) == "1,203"
    engine = _results()["models"]["gpt-neo-125m"]["engines"]["ours-int8"]
    assert plot.curve_points(engine, "prompt_length", "lengths", "ttft_s", 1e3) == [
        (128, 100.0),
        (2047, 1500.0),
    ]
    out = plot.plot(_results(), tmp_path / "bench.png")
    assert out.stat().st_size > 0
