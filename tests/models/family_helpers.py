"""Helpers for the GPT family tests: model directories with the GPT-2 tokenizer, and GGUF files
written the way llama.cpp's converter writes GPT-2 and GPT-NeoX checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch


def save_with_tokenizer(model: torch.nn.Module, target: Path, tokenizer_dir: Path) -> Path:
    """`save_pretrained` of `model` plus the tokenizer files of `tokenizer_dir`, in `target`."""
    model.eval().save_pretrained(target)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, target / f.name)
    return target


def _llama_cpp_tensors(arch: str, hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The GGUF tensors llama.cpp's convert_hf_to_gguf.py makes of an HF GPT-2 / GPT-NeoX."""
    config = hf.config
    out: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        top = {"transformer.wte": "token_embd", "transformer.wpe": "position_embd",
               "transformer.ln_f": "output_norm"}  # fmt: skip
        block = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
                 "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}  # fmt: skip
        prefix = "transformer.h."
    else:
        top = {"gpt_neox.embed_in": "token_embd", "gpt_neox.final_layer_norm": "output_norm",
               "lm_head": "output"}  # fmt: skip
        block = {"input_layernorm": "attn_norm", "attention.query_key_value": "attn_qkv",
                 "attention.dense": "attn_output", "post_attention_layernorm": "ffn_norm",
                 "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}  # fmt: skip
        prefix = "gpt_neox.layers."
    heads = config.num_attention_heads
    for key, t in hf.state_dict().items():
        base, _, kind = key.rpartition(".")
        if base in top:
            out[f"{top[base]}.{kind}"] = t
            continue
        if not key.startswith(prefix):
            continue  # GPT-2's tied lm_head: written as `output` below
        layer, _, rest = base[len(prefix) :].partition(".")
        if arch == "gpt2" and kind == "weight" and t.dim() == 2:
            t = t.t()  # Conv1D [in, out] -> [out, in]
        if arch == "gpt_neox" and rest == "attention.query_key_value":
            # per head [q, k, v] -> all q, all k, all v (convert_hf_to_gguf's GPTNeoXModel)
            t = t.reshape(heads, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
        out[f"blk.{layer}.{block[rest]}.{kind}"] = t
    if arch == "gpt2":
        out["output.weight"] = out["token_embd.weight"]  # the converter duplicates the tied head
    return out


def write_gguf(arch: str, hf: torch.nn.Module, tokenizer_dir: Path, path: Path) -> Path:
    """A float32 GGUF file of `hf` (arch "gpt2" or "gpt_neox") with the GPT-2 tokenizer."""
    import gguf

    c = hf.config
    name = {"gpt2": "gpt2", "gpt_neox": "gptneox"}[arch]
    w = gguf.GGUFWriter(str(path), name)
    w.add_name("tiny")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_head_count(c.num_attention_heads)
    if arch == "gpt2":
        w.add_feed_forward_length(c.n_inner or 4 * c.hidden_size)
        w.add_layer_norm_eps(c.layer_norm_epsilon)
    else:
        head_dim = c.hidden_size // c.num_attention_heads
        w.add_feed_forward_length(c.intermediate_size)
        w.add_rope_dimension_count(int(c.rope_parameters["partial_rotary_factor"] * head_dim))
        w.add_parallel_residual(c.use_parallel_residual)
        w.add_layer_norm_eps(c.layer_norm_eps)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    tokens = sorted(vocab, key=vocab.__getitem__)
    lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    w.add_token_merges([m for m in lines if m and not m.startswith("#")])
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|endoftext|>"])
    for tname, t in _llama_cpp_tensors(arch, hf).items():
        w.add_tensor(tname, np.ascontiguousarray(t.detach().float().numpy()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
