"""GGUF -> Hugging Face-named float32 safetensors + transformers config + tokenizer, cached.

(Reading the file itself, header and tensors, is `gguf_file.GGUFFile`.)

A GGUF file is converted once into an ordinary model directory under the fewshot cache
(`config.json`, `model.safetensors` with float32 weights, `tokenizer.json`,
`tokenizer_config.json`, `generation_config.json`); every later load reads that directory, which is
much faster than parsing a 262k-entry vocabulary and dequantising again.

What llama.cpp's converter changed, undone here:
- tensor names (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, ...);
- llama: Q and K rows were permuted for llama.cpp's rotary layout (`_unpermute_rotary`);
- gemma3: every `*norm.weight` was stored as `w + 1` (Gemma's RMSNorm multiplies by `1 + w`);
- gpt2, gptneox: see `gguf_gpt` (Conv1D transposes, GPT-NeoX's per-head fused QKV).
Architecture facts GGUF does not store are llama.cpp's own constants: Gemma 3's sliding-window
pattern (every 6th layer global) and local rope base (10,000).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from fewshot.models import gguf_gpt
from fewshot.models.gguf_file import GGUFFile
from fewshot.models.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2  # bump when the conversion changes, so old cache entries are not reused
SUPPORTED_ARCHS = ("llama", "gemma3", *gguf_gpt.ARCHS)
ROWS_PER_SLICE = 8192  # rows of a large tensor dequantised at a time while converting

# Gemma 3 facts llama.cpp hard-codes rather than storing in the file.
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10_000.0
# Tokens that end a turn in common chat formats; llama.cpp treats them as end-of-generation too.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")

GEMMA3_DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set c = messages[0]['content'] -%}"
    "{%- set first_user_prefix = (c if c is string else c[0]['text']) + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# --------------------------------------------------------------------------- config


def build_config(g: GGUFFile) -> Any:
    """The transformers config object for the file (LlamaConfig, Gemma3TextConfig, ...)."""
    arch = g.arch
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(
            f"{g.path.name}: GGUF architecture {arch!r} is not supported natively "
            f"(supported: {', '.join(SUPPORTED_ARCHS)})"
        )
    if arch in gguf_gpt.ARCHS:
        return gguf_gpt.build_config(g)
    md = g.metadata
    n_heads = int(g.arch_value("attention.head_count"))
    n_kv = int(g.arch_value("attention.head_count_kv", n_heads))
    hidden = int(g.arch_value("embedding_length"))
    head_dim = int(g.arch_value("attention.key_length", hidden // n_heads))
    tokens = md.get("tokenizer.ggml.tokens")
    vocab = int(g.arch_value("vocab_size", len(tokens) if tokens else 0))
    if "token_embd.weight" in g.tensors:
        vocab = g.tensors["token_embd.weight"].shape[0]
    common: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(g.arch_value("feed_forward_length")),
        "num_hidden_layers": int(g.arch_value("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": int(g.arch_value("context_length", 2048)),
        "rms_norm_eps": float(g.arch_value("attention.layer_norm_rms_epsilon", 1e-6)),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": md.get("tokenizer.ggml.padding_token_id"),
        "attention_bias": "blk.0.attn_q.bias" in g.tensors,
    }
    rope_base = float(g.arch_value("rope.freq_base", 10_000.0))
    scaling = _rope_scaling(g)
    if arch == "llama":
        from transformers import LlamaConfig

        rope = {"rope_type": "default", "rope_theta": rope_base, **scaling}
        return LlamaConfig(**common, rope_parameters=rope, mlp_bias=False)

    from transformers import Gemma3TextConfig

    n_layers = common["num_hidden_layers"]
    layer_types = [
        "full_attention" if (i + 1) % GEMMA3_SLIDING_PATTERN == 0 else "sliding_attention"
        for i in range(n_layers)
    ]
    # llama.cpp: the 27B model scales queries by hidden/heads, every other size by head_dim.
    query_scale = hidden // n_heads if n_layers == 62 else head_dim
    return Gemma3TextConfig(
        **common,
        sliding_window=int(g.arch_value("attention.sliding_window", 4096)),
        layer_types=layer_types,
        query_pre_attn_scalar=query_scale,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": rope_base, **scaling},
            "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_BASE},
        },
        final_logit_softcapping=g.arch_value("final_logit_softcapping"),
        attn_logit_softcapping=g.arch_value("attn_logit_softcapping"),
        hidden_activation="gelu_pytorch_tanh",
    )


def _rope_scaling(g: GGUFFile) -> dict[str, Any]:
    kind = g.arch_value("rope.scaling.type")
    if kind in (None, "none"):
        return {}
    factor = float(g.arch_value("rope.scaling.factor", 1.0))
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        orig = g.arch_value("rope.scaling.original_context_length")
        out: dict[str, Any] = {"rope_type": "yarn", "factor": factor}
        if orig:
            out["original_max_position_embeddings"] = int(orig)
        return out
    raise ValueError(f"{g.path.name}: unsupported rope scaling {kind!r}")


# --------------------------------------------------------------------------- tensors

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)\.(weight|bias)$")
_TOP = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_COMMON = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK = {
    "llama": {**_BLOCK_COMMON, "ffn_norm": "post_attention_layernorm"},
    "gemma3": {
        **_BLOCK_COMMON,
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}
_IGNORED = {"rope_freqs.weight"}


def hf_name(arch: str, gguf_name: str) -> str | None:
    """The Hugging Face key of GGUF tensor `gguf_name` (None when it has no HF counterpart)."""
    if gguf_name in _IGNORED:
        return None
    m = _LAYER.match(gguf_name)
    if arch in gguf_gpt.ARCHS:
        if m:
            return gguf_gpt.hf_name(arch, *m.groups())
        base, _, kind = gguf_name.rpartition(".")
        return gguf_gpt.hf_name(arch, None, base, kind)
    if m:
        layer, part, kind = m.groups()
        target = _BLOCK[arch].get(part)
        return f"model.layers.{layer}.{target}.{kind}" if target else None
    base, _, kind = gguf_name.rpartition(".")
    target = _TOP.get(base)
    return f"{target}.{kind}" if target else None


def _unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's `permute` of Q/K rows (interleaved rotary pairs -> HF halves)."""
    shape = w.shape
    return (
        w.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:]).transpose(1, 2).reshape(shape)
    )


def gguf_tensors(g: GGUFFile, config: Any) -> Iterator[tuple[str, Iterator[torch.Tensor]]]:
    """Every tensor of the file under its Hugging Face key, as float32 row slices.

    Tensors that need a whole-tensor fix (rotary unpermuting, Conv1D transposes) come as one
    slice; the rest, the large embeddings among them, `ROWS_PER_SLICE` rows at a time, so
    converting a file never holds more than one tensor in float32.
    """
    arch = g.arch
    for name in g.tensors:
        key = hf_name(arch, name)
        if key is None:
            if name not in _IGNORED:
                raise ValueError(f"{g.path.name}: unexpected tensor {name!r} for arch {arch!r}")
            log.warning("%s: ignoring tensor %s", g.path.name, name)
            continue
        if arch in gguf_gpt.ARCHS and gguf_gpt.dropped(key, config):
            continue
        yield key, _hf_slices(g, config, name)


def _hf_slices(g: GGUFFile, config: Any, name: str) -> Iterator[torch.Tensor]:
    arch, entry = g.arch, g.tensors[name]
    if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
        heads = config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads
        yield _unpermute_rotary(g.tensor(name), heads).contiguous()
    elif arch in gguf_gpt.ARCHS:
        yield gguf_gpt.restore_tensor(arch, name, g.tensor(name), config).contiguous()
    else:
        shift = arch == "gemma3" and name.endswith("norm.weight")  # stored as w + 1
        slices: Iterator[torch.Tensor]
        if len(entry.shape) == 2:
            rows = entry.shape[0]
            slices = (
                g.rows(name, start, min(rows, start + ROWS_PER_SLICE))
                for start in range(0, rows, ROWS_PER_SLICE) or [0]
            )
        else:
            slices = iter([g.tensor(name)])
        for t in slices:
            yield t - 1.0 if shift else t


def write_safetensors(path: Path, tensors: Iterable[tuple[str, Iterator[torch.Tensor]]]) -> None:
    """A float32 safetensors file of `tensors` (key, row slices), one slice in memory at a time.

    The data is streamed into a scratch file first (its shapes are known only once written),
    then the header and the data are written to `path`.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data_path = path.with_suffix(".data")
    offset = 0
    try:
        with data_path.open("wb") as data:
            for key, slices in tensors:
                begin, shapes = offset, []
                for t in slices:
                    flat = t.to(torch.float32).contiguous().reshape(-1)
                    data.write(flat.numpy().data)
                    shapes.append(list(t.shape))
                    offset += 4 * flat.numel()
                shape = (
                    shapes[0] if len(shapes) == 1 else [sum(s[0] for s in shapes), *shapes[0][1:]]
                )
                header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [begin, offset]}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        with path.open("wb") as out, data_path.open("rb") as data:
            out.write(len(raw).to_bytes(8, "little") + raw)
            shutil.copyfileobj(data, out, 16 << 20)
    finally:
        data_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- tokenizer


def gguf_tokenizer(g: GGUFFile) -> Tokenizer:
    """Build the tokenizer the file's metadata describes (slow on big vocabularies: cache it)."""
    from tokenizers import pre_tokenizers, processors
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    md = g.metadata
    keys = {
        "model": "tokenizer_type",
        "pre": "pre_tokenizer_type",
        "tokens": "tokens",
        "scores": "scores",
        "token_type": "token_type",
        "merges": "merges",
        "precompiled_charsmap": "precompiled_charsmap",
        "add_space_prefix": "add_prefix_space",
    }
    td = {
        new: md[f"tokenizer.ggml.{old}"]
        for old, new in keys.items()
        if f"tokenizer.ggml.{old}" in md
    }
    tokens: list[str] = td["tokens"]
    backend, _ = convert_gguf_tokenizer(g.arch, td)
    if td.get("pre_tokenizer_type") == "smollm":  # llama.cpp splits every digit on its own
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    bos_id = md.get("tokenizer.ggml.bos_token_id")
    eos_id = md.get("tokenizer.ggml.eos_token_id")
    add_bos = md.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        add_bos = td.get("tokenizer_type") == "llama"  # sentencepiece files default to BOS
    bos = tokens[bos_id] if bos_id is not None and bos_id < len(tokens) else None
    if add_bos and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    types = td.get("token_type") or [3] * len(tokens)
    eos_ids = [eos_id] if eos_id is not None else []
    eos_ids += [i for i, t in enumerate(tokens) if t in END_OF_TURN_TOKENS and types[i] == 3]
    template = md.get("tokenizer.chat_template")
    if template is None and g.arch == "gemma3" and "<start_of_turn>" in tokens:
        template = GEMMA3_DEFAULT_CHAT_TEMPLATE
    return Tokenizer(
        backend,
        bos_token=bos,
        eos_token_ids=eos_ids,
        add_bos_token=bool(add_bos),
        chat_template=template,
    )


# --------------------------------------------------------------------------- cache


def cache_key(path: Path) -> str:
    """File name + size + mtime (hashed): cheap, and changes whenever the file does."""
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{CONVERTER_VERSION}"
    return f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def converted_dir(path: Path, cache_dir: Path) -> Path:
    return Path(cache_dir) / "gguf" / cache_key(Path(path))


def convert_gguf(path: str | Path, cache_dir: Path, include_weights: bool = True) -> Path:
    """Convert `path` into an HF-style model directory under `cache_dir` (once); return it."""
    path = Path(path)
    target = converted_dir(path, cache_dir)
    if (target / "model.safetensors").is_file() or (
        not include_weights and (target / "tokenizer.json").is_file()
    ):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    g = GGUFFile(path)
    try:
        config = build_config(g)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            gguf_tokenizer(g).save(tmp)
            config.save_pretrained(tmp)
            (tmp / "source.json").write_text(
                json.dumps({"gguf": str(path.resolve()), "arch": g.arch}), encoding="utf-8"
            )
            if include_weights:
                write_safetensors(tmp / "model.safetensors", gguf_tensors(g, config))
            if target.exists():  # an older partial conversion (tokenizer only)
                shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        g.close()
    return target


def load_gguf_tokenizer(path: Path, cache_dir: Path | None = None) -> Tokenizer:
    """The tokenizer of a GGUF file (converted once into `cache_dir`, or built in memory)."""
    if cache_dir is None:
        g = GGUFFile(path)
        try:
            return gguf_tokenizer(g)
        finally:
            g.close()
    return Tokenizer.from_dir(convert_gguf(path, cache_dir, include_weights=False))
