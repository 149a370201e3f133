"""How one step's batch is described to attention: `AttentionMetadata`, built once per step by
the runner (`AttentionMetadata.build`) and read by every layer.

The engine keeps every sequence's keys and values in one `KVPool` (per layer a K and a V tensor
of fixed-size blocks, `[n_kv_heads, num_blocks, block_size, head_dim]`). A sequence owns a
*block table* (the ids of its blocks, in order); position p of the sequence lives in block
`table[p // block_size]` at offset `p % block_size`, i.e. at pool *slot*
`table[p // block_size] * block_size + p % block_size`. Blocks may be shared between sequences
(a prefix-cache hit, the n return sequences of one prompt): a hit costs no K/V copy at all.

A forward pass runs the new tokens of a whole batch as one flattened tensor `[N, ...]`. The
metadata says where each new token's K/V goes (`slot_mapping`) and, per sequence, its block
table, its first new position and how many new tokens it has; the sequences are split into a
decode group (one new token each) and a prefill group (chunks of several), each a `QueryGroup`
that `attention.paged_attention` attends with one call. What the layers derive from a group
once and share (the gather plan per window, `GatherPlan`; the native kernel's inputs,
`NativeInputs`) is cached on it. A batch of fixed shape (`PaddedStep`: decodes and short
chunks padded to T tokens each, padded block tables, as tensors only) is what a captured CUDA
graph replays (step_graphs.py). Nothing here assumes a device: every tensor is created on the
pool's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fewshot.models.kv_pool import KVPool

NATIVE_PREFILL_TOKENS = 64  # prefill chunks up to this long attend per query in the native kernel
# the native kernel's inputs for some queries: their rows of the batch (None: all, in order),
# block tables [R, W] and (first, end) positions (int32 [R] each)
NativeInputs = tuple[torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GatherPlan:
    """How one group of sequences (decodes or prefills) gathers keys for one window size."""

    blocks: torch.Tensor  # [B, nb] block ids to gather
    mask: torch.Tensor  # [B, 1, T, nb * bs] True where the query may see the key
    # cascade: leading blocks every sequence of a decode group shares (a few-shot prefix), read
    # once for all queries instead of once per sequence; `blocks`/`mask` then cover the rest
    shared: torch.Tensor | None = None  # [c] block ids
    shared_first: int | None = None  # first block id when the shared blocks are consecutive
    shared_mask: torch.Tensor | None = None  # [B, 1, 1, c * bs] (windowed layers only)
    derived: dict[str, torch.Tensor] = field(default_factory=dict)  # see `derive`

    def derive(self, key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`make()`, computed by the first layer that asks for `key` and shared by the others."""
        if key not in self.derived:
            self.derived[key] = make()
        return self.derived[key]


@dataclass
class QueryGroup:
    """Sequences of one kind in the flattened batch (decodes: T == 1; prefills: T >= 1)."""

    rows: torch.Tensor  # [B, T] row of each query in the flattened batch (padding: 0)
    valid: torch.Tensor  # [B, T] False for padding queries
    q_pos: torch.Tensor  # [B, T] absolute position of each query
    tables: torch.Tensor  # [B, max_blocks] block tables, padded with each row's last block
    n_blocks: torch.Tensor  # [B] blocks in use (covering positions < q_pos.max + 1)
    plans: dict[int | None, GatherPlan] = field(default_factory=dict)
    native: dict[int | None, NativeInputs] = field(default_factory=dict)  # per window

    @property
    def attends_natively(self) -> bool:
        """Whether the native kernel attends this group's queries (each on its own): decodes,
        and prefill chunks of up to NATIVE_PREFILL_TOKENS tokens."""
        return self.rows.shape[1] <= NATIVE_PREFILL_TOKENS

    def native_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The group's valid queries in its valid-row order: their rows of the batch [R], block
        tables [R, W] (each its sequence's) and context ends, position + 1 (int32 [R])."""
        tables = self.tables
        if self.rows.shape[1] > 1:  # each query its sequence's table
            tables = tables.repeat_interleave(self.valid.sum(1), 0)
        return self.rows[self.valid], tables, (self.q_pos[self.valid] + 1).to(torch.int32)

    @property
    def size(self) -> int:
        return self.rows.shape[0]


@dataclass
class PaddedStep:
    """A batch of B sequences with T new tokens each (T = 1: decodes) in fixed-shape tensors,
    nothing on the host: what a CUDA graph can replay. Table entries past a sequence's blocks
    (and padding rows) name a scratch block; keys past each query's position are masked."""

    tables: torch.Tensor  # [B, W] block ids
    q_pos: torch.Tensor  # [B, T] position of each new token
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict)  # per window

    def mask(self, window: int | None, bs: int) -> torch.Tensor:
        """[B, 1, T, W * bs]: True where the query may see the key (per window, shared by the
        layers with that window)."""
        if window not in self.masks:
            k_pos = torch.arange(self.tables.shape[1] * bs, device=self.q_pos.device)
            diff = self.q_pos[:, :, None] - k_pos[None, None, :]  # [B, T, L]
            allowed = diff >= 0
            if window is not None:
                allowed &= diff < window
            self.masks[window] = allowed[:, None]
        return self.masks[window]


@dataclass
class AttentionMetadata:
    """Everything attention needs about one step's batch; built once, read by every layer."""

    pool: KVPool | None
    slot_mapping: torch.Tensor  # [N] pool slot of each new token
    query_start: list[int]  # [B + 1] offsets of each sequence's tokens in the batch
    start_pos: list[int]  # [B] position of each sequence's first new token
    seq_ids: list[int] = field(default_factory=list)  # [B] engine ids (for stateful models)
    decode: QueryGroup | None = None
    prefill: QueryGroup | None = None
    order: torch.Tensor | None = None  # [N] output row of each (decode rows, then prefill rows)
    single: list[int] | None = None  # the block table when the batch is one decoding sequence
    # the native kernel's inputs for the one decoding sequence, per window (`NativeInputs`)
    native_inputs: dict[int | None, NativeInputs] = field(default_factory=dict)
    padded: PaddedStep | None = None  # a fixed-shape batch (a CUDA graph's step)

    @property
    def num_tokens(self) -> int:
        return self.query_start[-1]

    @property
    def attends_natively(self) -> bool:
        """Whether the native kernel (where it runs) attends every query of the batch on its
        own: decodes and short prefill chunks (`QueryGroup.attends_natively`)."""
        return self.padded is None and (
            self.single is not None
            or all(g is None or g.attends_natively for g in (self.decode, self.prefill))
        )

    def native_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every query's block table (int64 [N, W]) and context end, position + 1 (int32 [N]),
        in the batch's row order: the native kernels' inputs (`attends_natively` batches)."""
        if self.single is not None:
            tables = torch.tensor([self.single], dtype=torch.long)
            return tables, torch.tensor([self.start_pos[0] + 1], dtype=torch.int32)
        parts = [g.native_rows() for g in (self.decode, self.prefill) if g is not None]
        if len(parts) == 1:  # one group: its valid rows are the batch's, in order
            return parts[0][1], parts[0][2]
        width = max(t.shape[1] for _, t, _ in parts)  # pad with each row's last block (unread)
        tables = torch.cat(
            [F.pad(t, (0, width - t.shape[1]), mode="replicate") for _, t, _ in parts]
        )
        ends = torch.cat([hi for _, _, hi in parts])
        out_t, out_hi = torch.empty_like(tables), torch.empty_like(ends)
        out_t[self.order], out_hi[self.order] = tables, ends
        return out_t, out_hi

    @classmethod
    def build(
        cls,
        pool: KVPool | None,
        block_tables: Sequence[Sequence[int]],
        start_pos: Sequence[int],
        num_tokens: Sequence[int],
        *,
        block_size: int = 16,
        seq_ids: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """Describe a batch: sequence i runs `num_tokens[i]` new tokens at positions
        `start_pos[i]...`, its K/V in the blocks `block_tables[i]` (which must already cover
        the new positions)."""
        if not (len(block_tables) == len(start_pos) == len(num_tokens)):
            raise ValueError("block_tables, start_pos and num_tokens disagree")
        if any(n < 1 for n in num_tokens):
            raise ValueError(f"every sequence needs >= 1 new token, got {list(num_tokens)}")
        bs = pool.block_size if pool is not None else block_size
        device = pool.device if pool is not None else torch.device(device)
        offsets = [0]
        slots: list[int] = []
        for table, start, n in zip(block_tables, start_pos, num_tokens, strict=True):
            end = start + n
            if len(table) * bs < end:
                raise ValueError(f"block table of {len(table)} blocks cannot hold {end} tokens")
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            offsets.append(offsets[-1] + n)
        meta = cls(
            pool=pool,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
            query_start=offsets,
            start_pos=list(start_pos),
            seq_ids=list(seq_ids) if seq_ids is not None else list(range(len(num_tokens))),
        )
        if list(num_tokens) == [1]:  # one decoding sequence: attended over views, no gather
            meta.single = list(block_tables[0])
            return meta
        dec = [i for i, n in enumerate(num_tokens) if n == 1]
        pre = [i for i, n in enumerate(num_tokens) if n > 1]
        meta.decode = _query_group(dec, block_tables, start_pos, num_tokens, offsets, bs, device)
        meta.prefill = _query_group(pre, block_tables, start_pos, num_tokens, offsets, bs, device)
        rows = []
        for g in (meta.decode, meta.prefill):
            if g is not None:
                rows.append(g.rows[g.valid])
        meta.order = torch.cat(rows)
        return meta

    @classmethod
    def padded_step(
        cls, pool: KVPool, slots: torch.Tensor, tables: torch.Tensor, q_pos: torch.Tensor
    ) -> AttentionMetadata:
        """B sequences of T new tokens each described by tensors alone (`PaddedStep`): slots
        [B * T], tables [B, W] and positions [B, T] on the pool's device."""
        b, t = q_pos.shape
        return cls(
            pool=pool,
            slot_mapping=slots,
            query_start=list(range(0, b * t + 1, t)),
            start_pos=[0] * b,  # on the device only (`padded.q_pos`)
            padded=PaddedStep(tables, q_pos),
        )


def _query_group(
    members: list[int],
    block_tables: Sequence[Sequence[int]],
    start_pos: Sequence[int],
    num_tokens: Sequence[int],
    offsets: list[int],
    bs: int,
    device: torch.device,
) -> QueryGroup | None:
    if not members:
        return None
    t_max = max(num_tokens[i] for i in members)
    rows, valid, q_pos, tables, n_blocks = [], [], [], [], []
    width = max((start_pos[i] + num_tokens[i] - 1) // bs + 1 for i in members)
    for i in members:
        n, s = num_tokens[i], start_pos[i]
        rows.append([offsets[i] + t if t < n else 0 for t in range(t_max)])
        valid.append([t < n for t in range(t_max)])
        q_pos.append([s + min(t, n - 1) for t in range(t_max)])
        used = (s + n - 1) // bs + 1
        table = list(block_tables[i][:used])
        tables.append(table + [table[-1]] * (width - used))
        n_blocks.append(used)

    def as_tensor(x, dtype=torch.long):
        return torch.tensor(x, dtype=dtype, device=device)

    return QueryGroup(
        rows=as_tensor(rows),
        valid=as_tensor(valid, torch.bool),
        q_pos=as_tensor(q_pos),
        tables=as_tensor(tables),
        n_blocks=as_tensor(n_blocks),
    )
