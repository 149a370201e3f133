"""Batched decode steps replayed as CUDA graphs.

On a GPU a small model's decode step is launch-bound: GPT-Neo-125M runs some 200 kernels a step,
each a few microseconds of work behind tens of microseconds of Python and launch, so the eager
step took 6-12 ms on an H200 where its arithmetic needs a fraction of one. As in vLLM and
gpt-fast, the step is captured once per shape and replayed: a graph replays every kernel of
the forward from one call (the same H200: 1.4 ms/token against 11.5, few-shot serving 3.0x;
BENCHMARKS.md, fifteenth pass).

A graph needs fixed shapes and no host data, so a step of B decodes is padded to a batch bucket
(1, 2, 4, 8, ... up to the engine's batch limit) and its block tables to a width bucket (powers
of two up to the model's positions); padding rows and table entries name a *scratch block* that
the KV manager never hands out, and `PaddedDecode` masks keys past each query's position. The
inputs (tokens, positions, slots, tables) travel in one int64 tensor, one host-to-device copy a
step. Graphs are captured when a shape is first met and share one memory pool; they write K/V
into the engine's pool, which never moves. Prefill chunks, verification of drafts, prompt
logprobs and batches beyond the buckets run eagerly.

Off CUDA (`capture=False`) the same fixed-shape forward runs eagerly: what the CPU tests check
against the engine's other paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM
from fewshot.models.kv_pool import KVPool

log = logging.getLogger(__name__)


def buckets(limit: int) -> list[int]:
    """Powers of two below `limit`, then `limit`."""
    out = [1]
    while out[-1] * 2 < limit:
        out.append(out[-1] * 2)
    return out if out[-1] == limit else [*out, limit]


@dataclass
class _Shape:
    """One captured (or, off CUDA, eagerly run) step shape: B sequences, W table entries."""

    batch: int
    width: int
    inputs: torch.Tensor  # int64 [3B + B*W]: tokens, positions, slots, tables (row-major)
    rows: torch.Tensor  # [B] arange: every row's logits
    logits: torch.Tensor | None = None  # [B, vocab] float32, the graph's output
    graph: torch.cuda.CUDAGraph | None = None


class DecodeGraphs:
    """The model's decode steps, one fixed shape per (batch bucket, width bucket)."""

    def __init__(
        self, model: CausalLM, pool: KVPool, scratch_block: int, max_batch: int, capture: bool
    ) -> None:
        self.model = model
        self.pool = pool
        self.scratch = scratch_block
        self.bs = pool.block_size
        self.batches = buckets(max_batch)
        self.widths = buckets(-(-model.spec.max_positions // self.bs))
        self.capture = capture
        self.shapes: dict[tuple[int, int], _Shape] = {}
        self.mempool = torch.cuda.graph_pool_handle() if capture else None

    def run(
        self, tokens: list[int], positions: list[int], tables: list[list[int]]
    ) -> torch.Tensor | None:
        """Logits [n, vocab] (float32, on the device; valid until the next call: graphs share
        their memory) of n decodes: sequence i feeds `tokens[i]` at `positions[i]`, its blocks
        `tables[i]`. None when no bucket fits."""
        n, bs = len(tokens), self.bs
        need = max(p // bs for p in positions) + 1
        batch = next((b for b in self.batches if b >= n), None)
        width = next((w for w in self.widths if w >= need), None)
        if batch is None or width is None:
            return None
        shape = self.shapes.get((batch, width)) or self._build(batch, width)
        pad = batch - n
        slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, positions, strict=True)]
        host = [*tokens, *[0] * pad, *positions, *[0] * pad, *slots, *[self.scratch * bs] * pad]
        for t in tables:
            used = t[: min(len(t), width)]
            host += used + [self.scratch] * (width - len(used))
        host += [self.scratch] * (width * pad)
        shape.inputs.copy_(torch.tensor(host, dtype=torch.long), non_blocking=False)
        if shape.graph is not None:
            shape.graph.replay()
            assert shape.logits is not None
            return shape.logits[:n]
        return self._forward(shape)[:n]

    def _forward(self, shape: _Shape) -> torch.Tensor:
        b, w = shape.batch, shape.width
        x = shape.inputs
        attn = AttentionMetadata.padded_decode(
            self.pool, x[2 * b : 3 * b], x[3 * b :].view(b, w), x[b : 2 * b]
        )
        return self.model(x[:b], x[b : 2 * b], attn, shape.rows)

    def _build(self, batch: int, width: int) -> _Shape:
        device = self.pool.device
        inputs = torch.zeros(3 * batch + batch * width, dtype=torch.long, device=device)
        inputs[2 * batch : 3 * batch] = self.scratch * self.bs  # a harmless step: all scratch
        inputs[3 * batch :] = self.scratch
        shape = _Shape(batch, width, inputs, torch.arange(batch, device=device))
        if self.capture:
            with torch.inference_mode():
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):  # warm-up: kernels chosen, workspaces allocated
                    for _ in range(2):
                        self._forward(shape)
                torch.cuda.current_stream(device).wait_stream(side)
                shape.graph = torch.cuda.CUDAGraph()
                # thread-local: the server's other threads may touch CUDA meanwhile
                with torch.cuda.graph(
                    shape.graph, pool=self.mempool, capture_error_mode="thread_local"
                ):
                    shape.logits = self._forward(shape)
            log.info("captured a decode step: %d sequences, %d blocks each", batch, width)
        self.shapes[(batch, width)] = shape
        return shape
