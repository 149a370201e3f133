"""Converting a GGUF file a slice at a time: the safetensors written equal the whole tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.models import gguf_loader
from fewshot.models.checkpoint import CheckpointReader
from fewshot.models.gguf_file import GGUFFile


def _write(path: Path) -> None:
    import gguf
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "gemma3")
    embd = rng.standard_normal((37, 64)).astype(np.float32)  # 37 rows: slices of 5 leave 2
    q8 = GGMLQuantizationType.Q8_0
    w.add_tensor("token_embd.weight", quantize(embd, q8), raw_dtype=q8)
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((11, 64)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_sliced_conversion_equals_whole_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "tiny.gguf")
    monkeypatch.setattr(gguf_loader, "ROWS_PER_SLICE", 5)
    g = GGUFFile(tmp_path / "tiny.gguf")
    try:
        out = tmp_path / "model.safetensors"
        gguf_loader.write_safetensors(out, gguf_loader.gguf_tensors(g, config=None))
        reader = CheckpointReader(tmp_path)
        embd = reader.read("model.embed_tokens.weight")
        assert embd.shape == (37, 64) and torch.equal(embd, g.tensor("token_embd.weight"))
        # a slice of a quantised tensor starts at its row's bytes
        assert torch.equal(g.rows("token_embd.weight", 35, 37), g.tensor("token_embd.weight")[35:])
        norm = reader.read("model.layers.0.input_layernorm.weight")
        assert torch.equal(norm, g.tensor("blk.0.attn_norm.weight") - 1.0)  # Gemma's 1 + w
        up = reader.read("model.layers.0.mlp.up_proj.weight")
        assert up.shape == (11, 64) and torch.equal(up, g.tensor("blk.0.ffn_up.weight"))
        assert sorted(reader.keys()) == sorted(
            ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
             "model.layers.0.mlp.up_proj.weight"]
        )  # fmt: skip
    finally:
        g.close()
    assert not (tmp_path / "model.data").exists()  # the scratch file is removed
