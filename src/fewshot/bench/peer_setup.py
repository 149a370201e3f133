"""The llama.cpp peer's venv, built from prebuilt `llama-cpp-python` wheels.

`fewshot bench --llamacpp-wheels DIR` points at a directory with one wheel per build:
`DIR/avx2/*.whl` (runs on every x86-64 host with AVX2) and optionally `DIR/avx512/*.whl` (built
with AVX-512, VNNI and BF16: "Illegal instruction" on hosts without them). The build is chosen
from this CPU's flags and installed, once, into a venv of its own under the benchmark's work
directory, never into the project's environment. Without such wheels, install the peer by hand
and pass it with `--peer-python llamacpp=PYTHON`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fewshot.bench.machine import cpu_flags

# what the avx512 build uses (llama.cpp's system info on its build host: AVX512, AVX512_VBMI,
# AVX512_VNNI, AVX512_BF16); a host missing any of them gets the avx2 build
AVX512_BUILD_FLAGS = frozenset(
    {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vbmi", "avx512_vnni", "avx512_bf16"}
)
AVX2_BUILD_FLAGS = frozenset({"avx2", "fma", "f16c"})


def choose_wheel(wheels: Path, flags: set[str]) -> Path:
    """The wheel under `wheels` this CPU can run: the avx512 build where every flag it needs is
    present and it exists, else the avx2 build."""
    variants = ["avx512", "avx2"] if AVX512_BUILD_FLAGS <= flags else ["avx2"]
    if not AVX2_BUILD_FLAGS <= flags:
        raise RuntimeError(f"this CPU lacks {sorted(AVX2_BUILD_FLAGS - flags)}: no build fits")
    for variant in variants:
        found = sorted((wheels / variant).glob("llama_cpp_python-*.whl"))
        if found:
            return found[-1]
    raise FileNotFoundError(f"no llama_cpp_python wheel under {wheels}/{{{','.join(variants)}}}")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_llamacpp_venv(
    wheels: Path, root: Path, log: Callable[[str], None] = print, flags: set[str] | None = None
) -> Path:
    """The python of a venv under `root` with the right llama-cpp-python build installed
    (created on first use); the wheel's own dependencies come from the package index."""
    wheel = choose_wheel(wheels, cpu_flags() if flags is None else flags)
    venv = root / f"llamacpp-{wheel.parent.name}"
    python = venv_python(venv)
    check = [str(python), "-c", "import llama_cpp"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    log(f"llama.cpp peer: installing {wheel} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=1800
    )
    return python
