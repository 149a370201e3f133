"""Servers under test as subprocesses: start on a free port, wait until ready, sample memory,
stop. The same class runs the baseline and `fewshot serve`."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fewshot.bench.http_client import wait_http


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and its children, in bytes."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def vm_hwm(pid: int) -> int | None:
    """The kernel's peak resident set (VmHWM) of a process, in bytes, where Linux reports it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class MemorySampler:
    """Polls the RSS of a process tree in a background thread and keeps the peak."""

    pid: int
    interval: float = 0.1  # VmHWM catches what the samples miss
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MemorySampler:
        proc = psutil.Process(self.pid)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.peak = max(self.peak, tree_rss(proc))
                except psutil.Error:
                    return
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        if self._thread:
            self._thread.join()
        return self.peak


class ServerProcess:
    """A server started as `argv` (which must contain the port), logged to `log_path`."""

    def __init__(
        self,
        label: str,
        argv: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        ready_path: str = "/health",
        startup_timeout: float = 900.0,
    ) -> None:
        self.label = label
        self.argv = argv
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = env
        self.ready_path = ready_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.sampler: MemorySampler | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        self.sampler = MemorySampler(self.proc.pid).start()
        if not wait_http(self.base_url, self.ready_path, self.startup_timeout, self.alive):
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{self.label} did not start ({self.argv[:4]}...):\n{tail}")
        self.startup_seconds = time.perf_counter() - t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        return tree_rss(psutil.Process(self.proc.pid)) if self.alive() and self.proc else 0

    def peak_rss(self) -> int:
        """Peak RSS so far: the kernel's high-water mark, or the sampled peak."""
        sampled = self.sampler.peak if self.sampler else 0
        hwm = vm_hwm(self.proc.pid) if self.alive() and self.proc else None
        return max(sampled, hwm or 0)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


def baseline_argv(model_dir: Path, port: int, threads: int, device: str = "cpu") -> list[str]:
    """Command line of the transformers-pipeline baseline server."""
    return [
        sys.executable, "-m", "fewshot.bench.baseline_server",
        "--model", str(model_dir), "--port", str(port), "--threads", str(threads),
        "--device", device,
    ]  # fmt: skip


_CLI = "import sys; from fewshot.cli import main; sys.exit(main())"


def ours_argv(
    source: str, alias: str, port: int, threads: int, dtype: str, device: str = "cpu"
) -> list[str]:
    """Command line of `fewshot serve` for one model under `alias`."""
    return [
        sys.executable, "-c", _CLI, "serve",
        "--model", f"{alias}={source}", "--port", str(port),
        "--threads", str(threads), "--dtype", dtype, "--device", device,
    ]  # fmt: skip
