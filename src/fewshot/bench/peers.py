"""Peer engines, each in its own venv outside the repository, measured by `peer_runner.py`.

`--peer-python NAME=PYTHON` names a venv's python. Which backends it can run is found by
probing its imports (optimum + onnxruntime -> `ort`; optimum-intel + openvino -> `ov-int8`;
llama-cpp-python -> `llamacpp`). A missing venv or package is skipped with a note.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fewshot.bench.models import BenchModel
from fewshot.settings import configure_openmp

RUNNER = Path(__file__).with_name("peer_runner.py")

# backend -> modules its venv must have
BACKEND_MODULES: dict[str, list[str]] = {
    "ort": ["optimum.onnxruntime", "onnxruntime"],
    "ov-int8": ["optimum.intel", "openvino"],
    "ov": ["optimum.intel", "openvino"],
    "llamacpp": ["llama_cpp"],
}
DEFAULT_BACKENDS = ["ort", "ov-int8", "llamacpp"]
LABELS = {
    "ort": "ONNX Runtime fp32 (optimum)",
    "ov": "OpenVINO fp32 (optimum-intel)",
    "ov-int8": "OpenVINO int8 weights (optimum-intel)",
    "llamacpp": "llama.cpp (llama-cpp-python, GGUF)",
}

_PROBE = """
import importlib.util, json, sys
def has(m):
    try:
        return importlib.util.find_spec(m) is not None
    except ModuleNotFoundError:
        return False
print(json.dumps({m: has(m) for m in sys.argv[1:]}))
"""


@dataclass
class Peer:
    """A backend and the python that runs it."""

    backend: str
    python: Path

    @property
    def label(self) -> str:
        return LABELS.get(self.backend, self.backend)


@dataclass
class PeerDiscovery:
    peers: list[Peer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_peer_python(specs: list[str]) -> dict[str, Path]:
    """`["ov=/path/bin/python", ...]` -> {"ov": Path}."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--peer-python wants NAME=PYTHON, got {spec!r}")
        out[name] = Path(path)
    return out


def peer_env(home: Path, threads: int) -> dict[str, str]:
    """The explicit environment a peer runs in: offline, its own home, pinned threads, and the
    OpenMP wait policy our own server runs with (`configure_openmp`: idle threads spin briefly,
    then sleep; with llama.cpp's OpenMP barriers the default long spin is many times slower on
    a busy host)."""
    home.mkdir(parents=True, exist_ok=True)
    _opt_out_telemetry(home)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    configure_openmp(env)
    return env


def _opt_out_telemetry(home: Path) -> None:
    """OpenVINO's telemetry reads its consent from $HOME/intel/openvino_telemetry: say no."""
    consent = home / "intel" / "openvino_telemetry"
    consent.parent.mkdir(parents=True, exist_ok=True)
    consent.write_text("0")


def discover(
    pythons: dict[str, Path], backends: list[str], home: Path, threads: int
) -> PeerDiscovery:
    """Which of `backends` the given venvs can run; notes for what is skipped."""
    found = PeerDiscovery()
    available: dict[str, Path] = {}
    if not pythons:
        found.notes.append("no peer venv given (--peer-python NAME=PYTHON): peers skipped")
    for name, python in pythons.items():
        if not python.exists():
            found.notes.append(f"peer venv `{name}` not found at {python}: skipped")
            continue
        modules = sorted({m for b in backends for m in BACKEND_MODULES.get(b, [])})
        try:
            out = subprocess.run(
                [str(python), "-c", _PROBE, *modules],
                capture_output=True, text=True, timeout=120, env=peer_env(home, threads),
            )  # fmt: skip
            has = json.loads(out.stdout.strip().splitlines()[-1])
        except (subprocess.SubprocessError, ValueError, IndexError, OSError) as exc:
            found.notes.append(f"peer venv `{name}` ({python}) could not be probed: {exc}")
            continue
        for backend in backends:
            if backend not in available and all(has.get(m) for m in BACKEND_MODULES[backend]):
                available[backend] = python
    for backend in backends:
        if backend in available:
            found.peers.append(Peer(backend, available[backend]))
        elif pythons:
            missing = ", ".join(BACKEND_MODULES.get(backend, [backend]))
            found.notes.append(
                f"{LABELS.get(backend, backend)}: no given venv has {missing}: skipped"
            )
    return found


def applies(peer: Peer, model: BenchModel) -> bool:
    """llama.cpp runs GGUF files (it has no GPT-Neo); optimum peers run transformers dirs."""
    if peer.backend == "llamacpp":
        return model.gguf_path is not None
    return model.random_weights  # optimum exports of the GPT-Neo directories


def run_peer(
    peer: Peer,
    model: BenchModel,
    prompts_file: Path,
    work: Path,
    threads: int,
    rounds: int,
    new_tokens: int,
    serving_requests: int,
    serving_new_tokens: int,
    batch: int,
    stop: str,
    timeout: float,
    log_path: Path,
) -> dict:
    """Run one peer on one model; its JSON result, or {"error": ...}."""
    source = model.gguf_path if peer.backend == "llamacpp" else model.hf_dir
    argv = [
        str(peer.python), str(RUNNER), "--backend", peer.backend, "--model", str(source),
        "--work", str(work), "--prompts", str(prompts_file), "--threads", str(threads),
        "--rounds", str(rounds), "--new-tokens", str(new_tokens),
        "--serving-requests", str(serving_requests), "--serving-new-tokens", str(serving_new_tokens),
        "--batch", str(batch), "--stop", stop,
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_path.open("w") as log:
            out = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout,
                env=peer_env(work / "home", threads),
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"backend": peer.backend, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(out.stdout.strip().splitlines()):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict):
            return result
    return {"backend": peer.backend, "error": f"no result (exit {out.returncode}); see {log_path}"}
