"""SLOW PATH: any other transformers causal LM behind the native `CausalLM.forward` contract.

Families without a native class (GPT-2, OPT, Mistral, ...) still load, through
`AutoModelForCausalLM`. Each sequence keeps transformers' own `past_key_values` object on its
`HFKVCache`, and `forward` loops over the sequences one by one (no shared batched matmuls), so
this is correct but much slower than the native families. A warning names the model type.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Literal

import torch

from fewshot.models.base import CausalLM, KVCache, ModelSpec

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


class HFKVCache(KVCache):
    """One sequence's transformers `past_key_values` (`hf_past`) behind the KVCache interface.

    `length` mirrors the positions in `hf_past`; truncate crops it; slice / load_prefix copy
    per-layer keys and values for the prefix cache (standard attention caches only).
    """

    def __init__(self, model: HFFallbackLM) -> None:  # noqa: D107 - buffers live in hf_past
        s = model.spec
        self.n_layers = s.n_layers
        self.n_kv_heads = s.n_kv_heads
        self.head_dim = s.head_dim
        self.dtype = model.kv_dtype
        self.length = 0
        self.k = []
        self.v = []
        self.hf_past: Any = None
        self._config = model.hf.config

    @property
    def capacity(self) -> int:
        return self.length

    def reserve(self, total: int) -> None:
        """Nothing to do: transformers' caches grow by themselves."""

    def write(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):  # type: ignore[override]
        raise NotImplementedError("the transformers fallback writes its cache itself")

    def truncate(self, length: int) -> None:
        length = min(self.length, length)
        if length == self.length:
            return
        if length == 0:
            self.hf_past = None
            self.length = 0
            return
        # Rebuilt from copies rather than `crop`, whose meaning changed across transformers versions.
        ks, vs = self.slice(0, length)
        self.load_prefix(ks, vs)

    def _layers_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = getattr(self.hf_past, "layers", None)
        if layers is None:
            raise NotImplementedError("this transformers cache exposes no per-layer keys/values")
        return [(layer.keys[0], layer.values[0]) for layer in layers]  # [H, T, D] each

    def slice(self, start: int, end: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        kv = self._layers_kv()
        return (
            [k[:, start:end].clone() for k, _ in kv],
            [v[:, start:end].clone() for _, v in kv],
        )

    def load_prefix(self, ks: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
        from transformers import DynamicCache

        past = DynamicCache(config=self._config)
        for i, (k, v) in enumerate(zip(ks, vs, strict=True)):
            past.update(k[None].clone(), v[None].clone(), i)
        self.hf_past = past
        self.length = ks[0].shape[1]

    def nbytes(self) -> int:
        if self.hf_past is None or getattr(self.hf_past, "layers", None) is None:
            return 0
        return sum(k.numel() * k.element_size() * 2 for k, _ in self._layers_kv())


class HFFallbackLM(CausalLM):
    """A transformers `AutoModelForCausalLM` model under the native interface (slow path)."""

    def __init__(self, hf_model: torch.nn.Module, eos_token_ids: list[int] | None = None) -> None:
        super().__init__()
        self.hf = hf_model.eval()
        cfg = hf_model.config
        log.warning(
            "model_type %r has no native implementation; using the transformers fallback "
            "(slow path: one sequence at a time)",
            cfg.model_type,
        )
        n_heads = int(_first(cfg, "num_attention_heads", "n_head", "num_heads", default=1))
        hidden = int(_first(cfg, "hidden_size", "n_embd", "d_model", default=0))
        out = hf_model.get_output_embeddings()
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

    @property
    def model_type(self) -> str:
        return str(self.hf.config.model_type)

    def new_cache(self, capacity: int = 64) -> HFKVCache:
        del capacity
        return HFKVCache(self)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        caches: list[KVCache],
        counts: list[int],
        logits: Literal["last", "all"] = "last",
    ) -> torch.Tensor:
        if int(sum(counts)) != input_ids.shape[0] or len(caches) != len(counts):
            raise ValueError("input_ids, caches and counts disagree")
        outs: list[torch.Tensor] = []
        start = 0
        for cache, n in zip(caches, counts, strict=True):
            if not isinstance(cache, HFKVCache):
                raise TypeError("the transformers fallback needs caches from its new_cache()")
            ids = input_ids[start : start + n].reshape(1, n)
            start += n
            mask = torch.ones(1, cache.length + n, dtype=torch.long)
            res = self.hf(
                input_ids=ids,
                attention_mask=mask,
                use_cache=True,
                **{self._cache_arg: cache.hf_past},
            )
            past = getattr(res, "cache", None)
            cache.hf_past = past if past is not None else res.past_key_values
            cache.advance(n)
            step = res.logits[0].float()
            outs.append(step[-1:] if logits == "last" else step)
        return torch.cat(outs, dim=0)
