"""SLOW PATH: any other transformers causal LM behind the native `CausalLM.forward` contract.

Families without a native class (GPT-2, OPT, Mistral, ...) still load, through
`AutoModelForCausalLM`. It does not use the engine's paged KV pool (`paged = False`): each
sequence keeps transformers' own `past_key_values` object here, keyed by the engine's sequence
id, and `forward` loops over the sequences one by one (no shared batched matmuls). So it is
correct but much slower than the native families, and the engine serves it without prefix
sharing (its K/V cannot be indexed by block). A warning names the model type.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

import torch

from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM, ModelSpec

log = logging.getLogger(__name__)


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


class HFFallbackLM(CausalLM):
    """A transformers `AutoModelForCausalLM` model under the native interface (slow path)."""

    paged = False

    def __init__(self, hf_model: torch.nn.Module, eos_token_ids: list[int] | None = None) -> None:
        super().__init__()
        self.hf: Any = hf_model.eval()
        cfg: Any = hf_model.config
        log.warning(
            "model_type %r has no native implementation; using the transformers fallback "
            "(slow path: one sequence at a time)",
            cfg.model_type,
        )
        n_heads = int(_first(cfg, "num_attention_heads", "n_head", "num_heads", default=1))
        hidden = int(_first(cfg, "hidden_size", "n_embd", "d_model", default=0))
        hf: Any = hf_model
        out = hf.get_output_embeddings()
        vocab = int(out.weight.shape[0]) if out is not None else int(cfg.vocab_size)
        n_layers = int(_first(cfg, "num_hidden_layers", "n_layer", "num_layers", default=0))
        self.spec = ModelSpec(
            arch="hf_fallback",
            vocab_size=vocab,
            n_layers=n_layers,
            n_kv_heads=int(_first(cfg, "num_key_value_heads", default=n_heads)),
            head_dim=int(_first(cfg, "head_dim", default=hidden // max(n_heads, 1))),
            max_positions=int(
                _first(cfg, "max_position_embeddings", "n_positions", "n_ctx", default=2048)
            ),
            hidden_size=hidden,
            windows=[None] * n_layers,
            eos_token_ids=eos_token_ids or _id_list(getattr(cfg, "eos_token_id", None)),
            bos_token_id=getattr(cfg, "bos_token_id", None),
        )

        # transformers >= 5.2x calls the cache argument `cache`; earlier ones `past_key_values`.
        params = inspect.signature(hf_model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._past: dict[int, Any] = {}  # sequence id -> transformers cache
        self._lengths: dict[int, int] = {}  # sequence id -> positions in that cache

    @property
    def model_type(self) -> str:
        return str(self.hf.config.model_type)

    def fork(self, src_seq: int, dst_seq: int) -> None:
        self._past[dst_seq] = copy.deepcopy(self._past.get(src_seq))
        self._lengths[dst_seq] = self._lengths.get(src_seq, 0)

    def release(self, seq_id: int) -> None:
        self._past.pop(seq_id, None)
        self._lengths.pop(seq_id, None)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """One transformers call per sequence, with that sequence's own past."""
        bounds = attn.query_start
        if bounds[-1] != input_ids.shape[0] or len(attn.seq_ids) != len(bounds) - 1:
            raise ValueError("input_ids and attention metadata disagree")
        rows: list[torch.Tensor] = []
        for i, seq in enumerate(attn.seq_ids):
            start, end = bounds[i], bounds[i + 1]
            pos = attn.start_pos[i]
            if pos == 0:
                self.release(seq)
            elif self._lengths.get(seq) != pos:
                raise ValueError(f"sequence {seq} has {self._lengths.get(seq)} cached positions")
            ids = input_ids[start:end].reshape(1, end - start)
            mask = torch.ones(1, pos + end - start, dtype=torch.long)
            res = self.hf(
                input_ids=ids,
                attention_mask=mask,
                use_cache=True,
                **{self._cache_arg: self._past.get(seq)},
            )
            past = getattr(res, "cache", None)
            self._past[seq] = past if past is not None else res.past_key_values
            self._lengths[seq] = pos + end - start
            rows.append(res.logits[0].float())
        return torch.cat(rows, dim=0)[logits_indices]
