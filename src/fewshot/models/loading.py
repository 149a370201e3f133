"""load_model(source): a demo name, a GGUF file, a model directory or a hub id -> LoadedModel.

Resolution order:
1. a demo short name ("gemma-3-270m", "smollm2-135m"; see `registry.DEMO_MODELS`);
2. an existing `.gguf` file (converted once into the fewshot cache, then loaded as a directory);
3. an existing directory with config.json and weights (model.safetensors, sharded safetensors
   with model.safetensors.index.json, or pytorch_model.bin[.index.json]) and tokenizer files;
4. a hub id "org/name": `huggingface_hub.snapshot_download` of the config/tokenizer/weight files,
   from the local HF cache first, then from the hub when it is reachable.
Anything else raises ModelNotFoundError naming the source.

The native class is used when the config's model_type is in the registry, else the transformers
fallback (slow path). Native models are read tensor by tensor into their final dtype
(`checkpoint.py`), so loading needs about the memory of the final model, not of a float copy.
"auto" is chosen per device by `auto_dtype`: bf16 on CUDA, int8 on CPUs (fp32 where the native
kernels cannot be built).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from fewshot.models.base import CausalLM
from fewshot.models.checkpoint import CheckpointReader, load_into, parameters_on_meta
from fewshot.models.registry import DEMO_MODELS, native_class, resolve_demo
from fewshot.models.tokenizer import Tokenizer
from fewshot.settings import default_cache_dir

log = logging.getLogger(__name__)

DTYPES = ("auto", "fp32", "bf16", "int8")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "*.safetensors",
    "model.safetensors.index.json",
]
BIN_PATTERNS = ["pytorch_model.bin", "pytorch_model*.bin", "pytorch_model.bin.index.json"]


class ModelNotFoundError(FileNotFoundError):
    """The source names no demo model, file, directory or reachable/cached hub repository."""


@dataclass
class LoadedModel:
    model: CausalLM
    tokenizer: Tokenizer
    name: str
    source: str
    native: bool
    load_seconds: float
    dtype: str  # "fp32", "bf16" or "int8" ("auto" resolved)


def load_model(
    source: str,
    *,
    dtype: str = "auto",
    cache_dir: Path | None = None,
    hf_token: str | None = None,
    revision: str | None = None,
    hf_cache_dir: Path | None = None,
) -> LoadedModel:
    """Load `source` (demo name, .gguf file, directory or hub id) with weights in `dtype`.

    cache_dir: fewshot's converted-model cache (default: Settings' default cache dir).
    hf_cache_dir: the Hugging Face hub cache to use (default: huggingface_hub's own).
    """
    dtype = resolve_dtype(dtype)
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = source
    gguf = resolve_demo(source, cache_dir)
    path = Path(source).expanduser() if gguf is None else gguf
    if gguf is None and path.is_file() and path.suffix.lower() == ".gguf":
        gguf = path
        name = path.stem
    if gguf is not None:
        from fewshot.models.gguf_file import GGUFFile
        from fewshot.models.gguf_loader import SUPPORTED_ARCHS, convert_gguf, converted_dir

        directory = converted_dir(gguf, cache_dir)
        if not (directory / "model.safetensors").is_file():  # not converted yet
            g = GGUFFile(gguf)
            arch = g.arch
            g.close()
            if arch not in SUPPORTED_ARCHS:
                model, tok = _load_gguf_with_transformers(gguf, cache_dir)
                return _finish(model, tok, name, source, dtype, t0)
            directory = convert_gguf(gguf, cache_dir)
    elif path.is_dir():
        directory = path
        name = path.name
    elif HUB_ID.match(source):
        directory = _snapshot(source, revision=revision, token=hf_token, cache_dir=hf_cache_dir)
    else:
        raise ModelNotFoundError(
            f"model {source!r} not found: not a demo name ({', '.join(DEMO_MODELS)}), "
            "not an existing .gguf file or model directory, and not a hub id 'org/name'"
        )
    model, tok = load_directory(directory, dtype)
    return _finish(model, tok, name, source, dtype, t0)


def auto_dtype(device: str = "cpu", kernels: bool | None = None) -> str:
    """What "auto" means on `device` ("cpu" or "cuda"); `kernels`: whether the native int8
    kernels run here (default: `native.load()` succeeds, i.e. there is a C compiler).

    - CUDA: bf16.
    - A CPU where the native int8 kernels build: int8 (`quant.py`: weight-only, a bf16 scale per
      64 inputs, integer GEMV, native layers; top-1 agreement with fp32 98.7% on Gemma 3 270M,
      few-shot accuracy within 1 point), AMX hosts included. BENCHMARKS.md, 2 threads:
      on an AMX host (Intel Xeon, AVX512-VNNI, AMX-BF16): GPT-Neo-125M serving 21.8x the
      baseline against bf16's 15.8x, decode 5.5 against 18.3 ms/token, Gemma 3 270M serving
      23.3 against 21.1 requests/s, decode 13.2 against 44.4 ms/token; bf16's AMX GEMMs still
      take cold prompts and 32 concurrent unrelated prompts faster (88 against 222 ms, 437
      against 309 tokens/s on GPT-Neo: `--dtype bf16` for those loads). On a Zen 4 host
      (AVX-512, no AMX): serving 31.7x against bf16's 19.5x and fp32's 7.3x, decode 7.8
      against 19.2 and 36.0 ms/token. AVX2 only (emulated on the AMX host): serving 13.2x
      against fp32's 7.7x, decode 7.3 against 25.4 ms/token.
    - fp32 where the int8 kernels cannot be built (no C compiler): torch's int8 fallback is slow.
    """
    if device.startswith("cuda"):
        return "bf16"
    if kernels is None:
        from fewshot.models import native

        kernels = native.load() is not None
    return "int8" if kernels else "fp32"


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """ "auto" -> `auto_dtype(device)`; other names are checked and returned."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return auto_dtype(device) if dtype == "auto" else dtype


def _finish(
    model: CausalLM, tok: Tokenizer, name: str, source: str, dtype: str, t0: float
) -> LoadedModel:
    if tok.eos_token_ids:
        model.spec.eos_token_ids = list(tok.eos_token_ids)
    if tok.bos_token_id is not None:
        model.spec.bos_token_id = tok.bos_token_id
    model = _apply_dtype(model.eval(), dtype)
    model.loaded_dtype = dtype  # type: ignore[assignment]  # what LLM.dtype reports
    native = model.spec.arch != "hf_fallback"
    secs = time.perf_counter() - t0
    log.info("loaded %s (%s, %s, native=%s) in %.1fs", name, model.spec.arch, dtype, native, secs)
    return LoadedModel(model, tok, name, source, native, secs, dtype)


def _apply_dtype(model: CausalLM, dtype: str) -> CausalLM:
    """Bring a model loaded in fp32 (the transformers fallback) to `dtype`; native models
    arrive in their dtype already and pass through."""
    if getattr(model, "loaded_dtype", None) == dtype:
        return model
    if dtype == "fp32":
        return model.float()
    if dtype == "bf16":
        return model.to(torch.bfloat16)
    from fewshot.models.quant import quantize_model

    return cast(CausalLM, quantize_model(model))


# --------------------------------------------------------------------------- directories


_TRANSFORMERS_IMPORT = threading.Lock()


def read_config(directory: Path) -> Any:
    """The transformers config of a model directory."""
    with _TRANSFORMERS_IMPORT:  # transformers' lazy first import is not thread-safe
        from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(directory))


def load_directory(directory: str | Path, dtype: str = "fp32") -> tuple[CausalLM, Tokenizer]:
    """Model + tokenizer from an HF-style directory (native class when registered).

    A native model is built with its parameters on the meta device and filled tensor by tensor
    from the checkpoint, in `dtype` ("fp32", "bf16" or "int8") as each one arrives."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise ModelNotFoundError(f"{d} has no config.json")
    tok = Tokenizer.from_dir(d)
    config = read_config(d)
    cls = native_class(config.model_type)
    if cls is None:
        return _fallback_from_dir(d, tok), tok
    try:
        reader = CheckpointReader(d)
    except FileNotFoundError as e:
        raise ModelNotFoundError(str(e)) from e
    config, text_key = _text_part_keys(config, reader)
    with parameters_on_meta():
        model = cls(config)

    def key_of(name: str) -> str:
        return text_key(model.checkpoint_key(name, lambda k: text_key(k) in reader))

    quantize = None
    if dtype == "int8":
        from fewshot.models.quant import quantize_linear

        quantize = quantize_linear
    load_into(model, reader, dtype, key_of, quantize, model.checkpoint_transposed)
    model.loaded_dtype = dtype  # type: ignore[assignment]
    return model, tok


def _text_part_keys(config: Any, reader: CheckpointReader) -> tuple[Any, Callable[[str], str]]:
    """A multimodal Gemma 3 checkpoint: the language model's config, and how our parameter
    names map onto its keys."""
    if getattr(config, "model_type", None) != "gemma3" or not hasattr(config, "text_config"):
        return config, lambda k: k

    def key_of(name: str) -> str:
        if name == "lm_head.weight" or not name.startswith("model."):
            return name
        rest = name[len("model.") :]
        new = "model.language_model." + rest
        return new if new in reader else "language_model.model." + rest

    return config.text_config, key_of


def _fallback_from_dir(d: Path, tok: Tokenizer) -> CausalLM:
    from transformers import AutoModelForCausalLM

    from fewshot.models.fallback import HFFallbackLM

    hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    return HFFallbackLM(hf, eos_token_ids=tok.eos_token_ids)


def _load_gguf_with_transformers(path: Path, cache_dir: Path) -> tuple[CausalLM, Tokenizer]:
    """GGUF of an architecture with no native class: transformers reads it (slow path)."""
    from transformers import AutoModelForCausalLM

    from fewshot.models.fallback import HFFallbackLM
    from fewshot.models.gguf_loader import load_gguf_tokenizer

    tok = load_gguf_tokenizer(path, cache_dir)
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return HFFallbackLM(hf, eos_token_ids=tok.eos_token_ids), tok


# --------------------------------------------------------------------------- hub


def _snapshot(
    repo_id: str, *, revision: str | None, token: str | None, cache_dir: Path | None
) -> Path:
    """Local snapshot of `repo_id`: the HF cache first, then the hub when reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    kw: dict[str, Any] = {"revision": revision, "token": token, "cache_dir": cache_dir}
    try:
        path = Path(
            snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True, **kw)
        )
        if _has_weights(path):
            return path
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, **kw))
        if not _has_weights(path):  # an older repository with only .bin weights
            path = Path(
                snapshot_download(repo_id, allow_patterns=HUB_PATTERNS + BIN_PATTERNS, **kw)
            )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache and could not be fetched "
            f"from the hub ({type(e).__name__}). Download it where the hub is reachable, "
            "or pass a local directory or .gguf file."
        ) from e
    if not _has_weights(path):
        raise ModelNotFoundError(f"hub repository {repo_id!r} has no loadable weights")
    return path


def _has_weights(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / n).is_file()
        for n in (
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        )
    )
