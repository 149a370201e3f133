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
fallback (slow path).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from fewshot.models.base import CausalLM
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
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = source
    gguf = resolve_demo(source, cache_dir)
    path = Path(source).expanduser() if gguf is None else gguf
    if gguf is None and path.is_file() and path.suffix.lower() == ".gguf":
        gguf = path
        name = path.stem
    if gguf is not None:
        from fewshot.models.gguf_loader import (
            SUPPORTED_ARCHS,
            GGUFFile,
            convert_gguf,
            converted_dir,
        )

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
    model, tok = load_directory(directory)
    return _finish(model, tok, name, source, dtype, t0)


def _finish(
    model: CausalLM, tok: Tokenizer, name: str, source: str, dtype: str, t0: float
) -> LoadedModel:
    if tok.eos_token_ids:
        model.spec.eos_token_ids = list(tok.eos_token_ids)
    if tok.bos_token_id is not None:
        model.spec.bos_token_id = tok.bos_token_id
    model = _apply_dtype(model.eval(), dtype)
    native = model.spec.arch != "hf_fallback"
    secs = time.perf_counter() - t0
    log.info("loaded %s (%s, native=%s) in %.1fs", name, model.spec.arch, native, secs)
    return LoadedModel(model, tok, name, source, native, secs)


def _apply_dtype(model: CausalLM, dtype: str) -> CausalLM:
    if dtype in ("auto", "fp32"):
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


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint directory, under their checkpoint keys."""
    from safetensors.torch import load_file

    d = Path(directory)
    if (d / "model.safetensors").is_file():
        return load_file(str(d / "model.safetensors"))
    for index_name, loader in (
        ("model.safetensors.index.json", lambda p: load_file(str(p))),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        if (d / index_name).is_file():
            index = json.loads((d / index_name).read_text(encoding="utf-8"))
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index["weight_map"].values())):
                sd.update(loader(d / shard))
            return sd
    if (d / "pytorch_model.bin").is_file():
        return _load_bin(d / "pytorch_model.bin")
    raise ModelNotFoundError(
        f"no weights in {d}: expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json"
    )


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _text_part(config: Any, sd: Mapping[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
    """A multimodal Gemma 3 checkpoint: keep the language model's config and weights."""
    if getattr(config, "model_type", None) != "gemma3" or not hasattr(config, "text_config"):
        return config, dict(sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model.") :]] = v
        elif k.startswith("language_model."):
            out[k[len("language_model.") :]] = v
        elif k == "lm_head.weight":
            out[k] = v
    return config.text_config, out


def load_directory(directory: str | Path) -> tuple[CausalLM, Tokenizer]:
    """Model + tokenizer from an HF-style directory (native class when registered)."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise ModelNotFoundError(f"{d} has no config.json")
    tok = Tokenizer.from_dir(d)
    config = read_config(d)
    cls = native_class(config.model_type)
    if cls is None:
        return _fallback_from_dir(d, tok), tok
    sd = read_state_dict(d)
    config, sd = _text_part(config, sd)
    with _skip_init():  # every parameter is overwritten by the checkpoint
        model = cls(config)
    model.load_hf_state_dict(sd)
    return model, tok


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
)  # fmt: skip


@contextmanager
def _skip_init() -> Iterator[None]:
    """Make torch.nn.init a no-op while a model is built (its weights are loaded right after)."""
    saved = {n: getattr(torch.nn.init, n) for n in _INIT_FUNCTIONS}
    try:
        for n in _INIT_FUNCTIONS:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


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
