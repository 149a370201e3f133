"""What machine the benchmark ran on, and its measured memory bandwidth (the decode floor)."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fewshot.settings import available_cores

INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


@dataclass
class MachineInfo:
    """CPU model, core counts, memory, and the instruction-set flags that matter for kernels."""

    cpu_model: str
    logical_cores: int
    physical_cores: int | None
    available_cores: int
    memory_gib: float
    flags: list[str] = field(default_factory=list)
    load_avg_1m: float | None = None
    python: str = ""
    torch: str = ""
    gpu: str | None = None  # the CUDA device the run used, by name

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    """Every instruction-set flag of the first CPU in /proc/cpuinfo (empty where unreadable)."""
    try:
        text = path.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """CPU model name and the interesting flags present, from /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown", []
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("unknown", "", platform.processor()):
            model = value.strip()
        elif key == "flags" and not flags:
            present = set(value.split())
            flags = [f for f in INTERESTING_FLAGS if f in present]
    return model, flags


def machine_info(device: str = "cpu") -> MachineInfo:
    """Describe this machine (and the CUDA device, where `device` names one)."""
    import psutil
    import torch

    model, flags = _cpuinfo()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return MachineInfo(
        cpu_model=model,
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        available_cores=available_cores(),
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
        flags=flags,
        load_avg_1m=load,
        python=platform.python_version(),
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
    )


def measure_bandwidth(threads: int, size_mb: int = 1024, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: the best of `repeats` torch sums over a large fp32 tensor."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
        x.sum()  # touch the pages and warm up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t0)
        nbytes = x.numel() * x.element_size()
        del x
        return nbytes / best / 1e9
    finally:
        torch.set_num_threads(previous)
