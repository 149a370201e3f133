"""Engine steps replayed as CUDA graphs: batched decodes, and the short chunks that join them.

On a GPU a small model's decode step is launch-bound: GPT-Neo-125M runs some 200 kernels a step,
each a few microseconds of work behind tens of microseconds of Python and launch, so the eager
step took 6-12 ms on an H200 where its arithmetic needs a fraction of one. As in vLLM and
gpt-fast, the step is captured once per shape and replayed: a graph replays every kernel of
the forward from one call (the same H200: 1.4 ms/token against 11.5, few-shot serving 3.0x;
BENCHMARKS.md, fifteenth pass). A few-shot query after its cached prefix is such a step too:
a chunk of some 20-30 new tokens, beside the other sequences' decodes.

A graph needs fixed shapes and no host data, so a step of B sequences, each feeding 1 to T new
tokens, is padded to a batch bucket (1, 2, 4, 8, ... up to the engine's batch limit), T to a
rows bucket (1, 2, 4, ... MAX_ROWS) and the block tables to a width bucket (powers of two up to
the model's positions): every sequence gets T query rows. Padding rows and table entries name a
*scratch block* that the KV manager never hands out (a padding row writes its K/V there), and
`PaddedStep` masks keys past each query's position. The inputs (tokens, positions, slots,
tables, the row of each sequence's last token) travel in one int64 tensor, one host-to-device
copy a step. Graphs are captured when a shape is first met and share one memory pool; they
write K/V into the engine's pool, which never moves. Longer chunks, verification of drafts,
prompt logprobs and batches beyond the buckets run eagerly.

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


MAX_ROWS = 64  # most new tokens per sequence in a replayed step (a chunk's rows bucket)
MAX_STEP_ROWS = 512  # most query rows (batch bucket x rows bucket) in a replayed step


@dataclass
class _Shape:
    """One captured (or, off CUDA, eagerly run) step shape: B sequences of T query rows each,
    W table entries."""

    batch: int
    rows: int
    width: int
    inputs: torch.Tensor  # int64 [3BT + BW + B]: tokens, positions, slots, tables, logit rows
    logits: torch.Tensor | None = None  # [B, vocab] float32, the graph's output
    graph: torch.cuda.CUDAGraph | None = None


class StepGraphs:
    """The model's steps of decodes and short chunks, one fixed shape per (batch bucket, rows
    bucket, width bucket)."""

    def __init__(
        self, model: CausalLM, pool: KVPool, scratch_block: int, max_batch: int, capture: bool
    ) -> None:
        self.model = model
        self.pool = pool
        self.scratch = scratch_block
        self.bs = pool.block_size
        self.batches = buckets(max_batch)
        self.rows = buckets(MAX_ROWS)
        self.widths = buckets(-(-model.spec.max_positions // self.bs))
        self.capture = capture
        self.shapes: dict[tuple[int, int, int], _Shape] = {}
        self.mempool = torch.cuda.graph_pool_handle() if capture else None

    def run(
        self, tokens: list[list[int]], starts: list[int], tables: list[list[int]]
    ) -> torch.Tensor | None:
        """Logits [n, vocab] (float32, on the device; valid until the next call: graphs share
        their memory) of n sequences' last new tokens: sequence i feeds `tokens[i]` at
        positions `starts[i]`, `starts[i]` + 1, ..., its blocks `tables[i]`. None when no
        bucket fits (the caller runs the step eagerly)."""
        n, bs = len(tokens), self.bs
        longest = max(len(t) for t in tokens)
        need = max((s + len(t) - 1) // bs for t, s in zip(tokens, starts, strict=True)) + 1
        batch = next((b for b in self.batches if b >= n), None)
        rows = next((r for r in self.rows if r >= longest), None)
        width = next((w for w in self.widths if w >= need), None)
        if batch is None or rows is None or width is None or batch * rows > MAX_STEP_ROWS:
            return None
        shape = self.shapes.get((batch, rows, width)) or self._build(batch, rows, width)
        shape.inputs.copy_(self._inputs(tokens, starts, tables, batch, rows, width))
        if shape.graph is not None:
            shape.graph.replay()
            assert shape.logits is not None
            return shape.logits[:n]
        return self._forward(shape)[:n]

    def _inputs(
        self,
        tokens: list[list[int]],
        starts: list[int],
        tables: list[list[int]],
        batch: int,
        rows: int,
        width: int,
    ) -> torch.Tensor:
        """The step's int64 inputs (`_Shape.inputs`). A sequence's rows past its tokens repeat
        its last position and write to the scratch block; padding sequences are all scratch."""
        bs, scratch_slot = self.bs, self.scratch * self.bs
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        table_ids: list[int] = []
        last: list[int] = []
        for i, (toks, start, table) in enumerate(zip(tokens, starts, tables, strict=True)):
            pad = rows - len(toks)
            pos = list(range(start, start + len(toks)))
            ids += toks + [0] * pad
            positions += pos + [pos[-1]] * pad
            slots += [table[p // bs] * bs + p % bs for p in pos] + [scratch_slot] * pad
            used = table[: min(len(table), width)]
            table_ids += used + [self.scratch] * (width - len(used))
            last.append(i * rows + len(toks) - 1)
        empty = batch - len(tokens)
        ids += [0] * (rows * empty)
        positions += [0] * (rows * empty)
        slots += [scratch_slot] * (rows * empty)
        table_ids += [self.scratch] * (width * empty)
        last += [i * rows for i in range(len(tokens), batch)]
        return torch.tensor(ids + positions + slots + table_ids + last, dtype=torch.long)

    def _forward(self, shape: _Shape) -> torch.Tensor:
        b, t, w = shape.batch, shape.rows, shape.width
        n, x = b * t, shape.inputs
        attn = AttentionMetadata.padded_step(
            self.pool,
            x[2 * n : 3 * n],
            x[3 * n : 3 * n + b * w].view(b, w),
            x[n : 2 * n].view(b, t),
        )
        return self.model(x[:n], x[n : 2 * n], attn, x[3 * n + b * w :])

    def _build(self, batch: int, rows: int, width: int) -> _Shape:
        device = self.pool.device
        n = batch * rows
        inputs = torch.zeros(3 * n + batch * width + batch, dtype=torch.long, device=device)
        inputs[2 * n : 3 * n] = self.scratch * self.bs  # a harmless step: all scratch
        inputs[3 * n : 3 * n + batch * width] = self.scratch
        inputs[3 * n + batch * width :] = torch.arange(batch, device=device) * rows
        shape = _Shape(batch, rows, width, inputs)
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
            log.info("captured a step: %d sequences of %d rows, %d blocks each", batch, rows, width)
        self.shapes[(batch, rows, width)] = shape
        return shape
