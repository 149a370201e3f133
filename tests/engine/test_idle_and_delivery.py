"""Serving overheads that are not timings: the step loop parks on its condition when idle, a
non-streaming request wakes its consumer once per sequence (not once per token), and the CLI
makes OpenMP workers sleep instead of spinning (busy workers starve the server's event loop)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

from engine_helpers import random_ids

from fewshot.engine.types import SamplingParams
from fewshot.settings import OPENMP_SPIN_COUNT, configure_openmp

GREEDY = SamplingParams(max_new_tokens=6, ignore_eos=True)


def _cpu_ticks(thread: threading.Thread) -> int:
    """User + system clock ticks the thread has used (Linux /proc)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_idle_step_loop_parks_without_spinning(llm) -> None:
    llm.generate(random_ids(10, seed=1), GREEDY)
    engine = llm.engine
    thread = engine.thread
    assert thread is not None and thread.is_alive()
    deadline = time.monotonic() + 10
    while not engine.idle and time.monotonic() < deadline:  # finishing its last step
        time.sleep(0.01)
    assert engine.idle
    steps, ticks = engine.counters["steps"], _cpu_ticks(thread)
    time.sleep(0.5)
    assert engine.counters["steps"] == steps
    assert _cpu_ticks(thread) - ticks <= 2  # a spinning loop would use ~50 ticks


def test_non_streaming_handle_gets_only_final_events(llm) -> None:
    params = SamplingParams(max_new_tokens=6, ignore_eos=True, n=2, do_sample=True, seed=3)
    handle = llm.engine.submit(random_ids(10, seed=2), params, loop=None, stream=False)
    events = list(handle)
    assert len(events) == 2 and all(ev.result is not None for ev in events)
    assert all(len(ev.result.token_ids) == 6 for ev in events)
    streamed = list(llm.engine.submit(random_ids(10, seed=2), params, loop=None))
    assert len(streamed) == 12
    finals = sorted((ev for ev in streamed if ev.result), key=lambda ev: ev.index)
    assert [ev.result.token_ids for ev in finals] == [
        ev.result.token_ids for ev in sorted(events, key=lambda ev: ev.index)
    ]


def test_non_streaming_async_handle_wakes_the_loop_once_per_sequence(llm) -> None:
    async def run() -> tuple[int, list]:
        loop = asyncio.get_running_loop()
        calls = 0
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        try:
            handle = llm.engine.submit(random_ids(10, seed=4), GREEDY, stream=False)
            results = await handle.results()
        finally:
            del loop.call_soon_threadsafe
        return calls, results

    calls, results = asyncio.run(run())
    assert len(results[0].token_ids) == 6
    assert calls <= 2  # the final event (+ at most one wake-up of the engine by cancel)


def test_openmp_workers_spin_briefly_unless_the_user_chose() -> None:
    env: dict[str, str] = {}
    configure_openmp(env)
    assert env == {"GOMP_SPINCOUNT": str(OPENMP_SPIN_COUNT)}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    configure_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}  # a chosen policy keeps its own spin count
    env = {"GOMP_SPINCOUNT": "0"}
    configure_openmp(env)
    assert env == {"GOMP_SPINCOUNT": "0"}


def test_cli_sets_the_wait_policy_before_torch_loads() -> None:
    import subprocess

    code = (
        "import os, sys\n"
        "os.environ.pop('GOMP_SPINCOUNT', None)\n"
        "import fewshot.cli as cli\n"
        "cli.build_parser = lambda: (_ for _ in ()).throw(SystemExit("
        f"'torch' in sys.modules or os.environ.get('GOMP_SPINCOUNT') != '{OPENMP_SPIN_COUNT}'))\n"
        "cli.main([])\n"
    )
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    env = {k: v for k, v in __import__("os").environ.items() if k not in drop}
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert proc.returncode == 0


def test_llm_load_runs_torch_in_a_thread_that_ends(tiny_gpt_neo_dir, monkeypatch) -> None:
    """The load's OpenMP pool must not outlive it on the caller's thread (see
    `llm._in_passing_thread`): the load runs elsewhere, and that thread is gone afterwards."""
    import fewshot.models.loading as loading
    from fewshot.engine.llm import LLM

    seen: list[threading.Thread] = []
    real = loading.load_model

    def spy(*args, **kwargs):
        seen.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_model", spy)
    with LLM.load(str(tiny_gpt_neo_dir), threads=1, kv_cache_mb=4) as llm:
        assert len(llm.generate("Hello", max_new_tokens=2).token_ids) == 2
    assert len(seen) == 1 and seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()
