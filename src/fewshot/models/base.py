"""The interface every model implements: the engine v2 model contract.

A forward pass takes a *flattened* batch: the new tokens of several sequences concatenated into
one 1-D tensor with their absolute positions, plus an `AttentionMetadata` (models/attention_metadata.py)
that says where each sequence's keys and values live in the shared paged `KVPool` and where the
new ones go. Linear layers run on all tokens at once (a batch of decodes shares one read of the
weights); each attention layer makes one `paged_attention` call for the whole batch. Logits are
computed only for the rows the caller asks for (`logits_indices`): each sequence's last token
when sampling, every prompt token when prompt logprobs are wanted, from the same forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.layers import load_hf_state_dict
from fewshot.models.native_step import DecodeLayers, FusedLayers


@dataclass
class ModelSpec:
    """Architecture facts the engine needs, independent of the family."""

    arch: str  # "gpt_neo" | "llama" | "gemma3" | "hf_fallback"
    vocab_size: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    max_positions: int
    hidden_size: int = 0
    # per layer: None for global attention, else the sliding window in tokens
    windows: list[int | None] = field(default_factory=list)
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None


class CausalLM(nn.Module):
    """Base class of the models the engine runs.

    Subclasses set `self.spec` and implement `forward`. Native families keep no per-sequence
    state (`paged = True`: all K/V lives in the pool the metadata carries); their
    `state_dict()` keys are the Hugging Face checkpoint's keys for the same architecture.
    A model that keeps its own per-sequence state (`paged = False`, the transformers fallback)
    is told when a sequence is forked or released.
    """

    spec: ModelSpec
    paged: bool = True
    fuse_layers: bool = True  # run a batch's decoder layers natively where they can (native_step)

    def decode_layers(self) -> DecodeLayers | None:
        """The decoder layers for the native step (native_step.py); None: the family runs them
        in Python only."""
        return None

    def fused_layers(self, x: torch.Tensor, attn: AttentionMetadata) -> FusedLayers | None:
        """The native step when it runs this batch's layers (`x` the embedded new tokens), else
        None. Built at first use (after quantization has swapped the Linears)."""
        if not self.fuse_layers or torch.compiler.is_compiling():
            return None  # (a compiled graph traces the eager layers)
        # keyed by the LM head, which quantize_model / pack_linears replace; `_apply` (.to(),
        # .float(), ...) drops it: the step holds the weights' addresses
        key = id(getattr(self, "lm_head", None))
        cached = self.__dict__.get("_fused_layers")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_fused_layers"] = (key, FusedLayers.build(self.decode_layers()))
        step = cached[1]
        return step if step is not None and step.takes(x, attn) else None

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self.__dict__.pop("_fused_layers", None)
        return super()._apply(fn, recurse)

    @property
    def kv_dtype(self) -> torch.dtype:
        p = next(self.parameters())
        return p.dtype if p.is_floating_point() else torch.float32

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """Run the new tokens of a batch.

        input_ids:      [N] long, the new tokens of all sequences concatenated.
        positions:      [N] long, each token's absolute position in its sequence.
        attn:           the batch's attention metadata (pool, block tables, slot mapping).
        logits_indices: [M] long, rows of the batch whose logits are wanted.
        Returns float32 logits [M, vocab]. New K/V are written to the pool.
        """
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes the weights take: parameters and buffers (each storage once) and the packed
        weights modules hold outside them (their `packed_bytes`: int8, oneDNN-reordered bf16)."""
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in (*self.parameters(), *self.buffers())
        }
        packed = sum(getattr(m, "packed_bytes", 0) for m in self.modules())
        return sum(storages.values()) + packed

    tied_key: str | None = None  # state-dict key of the embedding the LM head shares

    def tie_head(self, embedding: nn.Embedding, key: str, tie: bool) -> None:
        """Share the LM head's weight with the input embedding (`key`) when `tie`."""
        self.tied_key = key if tie else None
        if tie:
            head: nn.Linear = self.get_submodule("lm_head")  # type: ignore[assignment]
            head.weight = embedding.weight

    @property
    def tied(self) -> bool:
        return self.tied_key is not None

    def checkpoint_key(self, name: str, has: Callable[[str], bool]) -> str:
        """The checkpoint key holding parameter `name` (`has` tells which keys exist); families
        whose checkpoints name things otherwise override it."""
        return name

    def checkpoint_transposed(self, name: str) -> bool:
        """Whether checkpoints store parameter `name` transposed (GPT-2's Conv1D weights)."""
        return False

    def load_hf_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Load a Hugging Face-named state dict: every key must be there with its shape (a
        tied head may be missing); raises KeyError / ValueError naming the keys."""
        own: dict[str, torch.Tensor] = {}
        for name in self.state_dict():
            key = self.checkpoint_key(name, sd.__contains__)
            if key in sd:
                t = sd[key]
                own[name] = t.t() if self.checkpoint_transposed(name) and t.dim() == 2 else t
        tied = {"lm_head.weight": self.tied_key} if self.tied_key else {}
        load_hf_state_dict(self, own, tied)

    def fork(self, src_seq: int, dst_seq: int) -> None:
        """A stateful model copies sequence `src_seq`'s state to `dst_seq` (n > 1)."""

    def release(self, seq_id: int) -> None:
        """A stateful model drops sequence `seq_id`'s state."""
