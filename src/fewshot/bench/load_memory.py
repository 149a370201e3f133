"""Peak memory of loading a model directory in fp32, bf16 and int8, against the loaded size.

Run as `python -m fewshot.bench.load_memory [--dir DIR] [--hidden 2048 --layers 24 --heads 16]`.
Without an existing DIR it first writes a GPT-Neo directory with random weights of the given
shape (default: GPT-Neo-1.3B's), streaming one tensor at a time into model.safetensors. Each
dtype then loads in a fresh subprocess that reports its peak RSS (ru_maxrss), its RSS before
loading (the imports, config and tokenizer) and the bytes the loaded model holds. Prints one JSON line per dtype with
ratio = (peak - before) / model bytes: 1.0 means loading needed nothing beyond the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_CHILD = r"""
import json, resource, sys, time, torch
from fewshot.models.loading import load_directory, read_config
from fewshot.models.quant import Int8Linear
from fewshot.models.tokenizer import Tokenizer
read_config(sys.argv[1]), Tokenizer.from_dir(sys.argv[1])  # imports, before the baseline
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
before = rss_mb()
t0 = time.perf_counter()
model, _ = load_directory(sys.argv[1], sys.argv[2])
secs = time.perf_counter() - t0
nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
for m in model.modules():
    if isinstance(m, Int8Linear):
        nbytes += m.nbytes
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"dtype": sys.argv[2], "peak_rss_mb": round(peak), "before_mb": round(before),
    "after_mb": round(rss_mb()), "model_mb": round(nbytes / 2**20), "load_s": round(secs, 1),
    "ratio": round((peak - before) / (nbytes / 2**20), 2)}))
"""


def write_random_gpt_neo(
    directory: Path, hidden: int, layers: int, heads: int, vocab: int = 50257
) -> Path:
    """A GPT-Neo checkpoint directory with random fp32 weights, written tensor by tensor, and a
    byte-level tokenizer."""
    import torch
    from transformers import GPTNeoConfig

    from fewshot.models.checkpoint import parameters_on_meta
    from fewshot.models.gpt_neo import GPTNeoForCausalLM

    config = GPTNeoConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        attention_types=[[["global", "local"], layers // 2]],
        max_position_embeddings=2048,
        vocab_size=vocab,
    )
    with parameters_on_meta():
        model = GPTNeoForCausalLM(config)
    params = dict(model.named_parameters())  # tied parameters appear once
    header: dict[str, Any] = {}
    offset = 0
    for name, p in params.items():
        size = p.numel() * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(p.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    gen = torch.Generator().manual_seed(0)
    with (directory / "model.safetensors").open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for p in params.values():
            t = torch.randn(p.shape, generator=gen) * 0.02
            f.write(t.numpy().tobytes())
    write_tokenizer_stub(directory)
    return directory


def measure(directory: Path, dtype: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory), dtype],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dtypes", default="fp32,bf16,int8")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir
        if directory is None or not (directory / "config.json").is_file():
            directory = args.dir or Path(tmp) / "gpt-neo-random"
            write_random_gpt_neo(directory, args.hidden, args.layers, args.heads)
        for dtype in args.dtypes.split(","):
            print(json.dumps(measure(directory, dtype)), flush=True)
    return 0


def write_tokenizer_stub(directory: Path) -> None:
    """A minimal byte-level tokenizer.json, so the directory loads like a real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {chr(i): i for i in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(directory / "tokenizer.json"))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
