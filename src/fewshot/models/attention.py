"""Paged KV storage and the one attention call per layer that every native family uses.

The engine keeps every sequence's keys and values in one `KVPool`: per layer a K and a V tensor
of fixed-size blocks, `[n_kv_heads, num_blocks, block_size, head_dim]`. A sequence owns a *block
table* (the ids of its blocks, in order); position p of the sequence lives in block
`table[p // block_size]` at offset `p % block_size`, i.e. at pool *slot*
`table[p // block_size] * block_size + p % block_size`. Blocks may be shared between sequences
(a prefix-cache hit, the n return sequences of one prompt): a hit costs no K/V copy at all.

A forward pass runs the new tokens of a whole batch as one flattened tensor `[N, ...]`. The
runner describes the batch once per step in an `AttentionMetadata` (`AttentionMetadata.build`):
where each new token's K/V goes (`slot_mapping`) and, per sequence, its block table, its first
new position and how many new tokens it has. Each attention layer then calls `paged_attention`,
which
1. writes the new K/V of every sequence with one indexed copy per tensor, and
2. attends every query of the batch with one SDPA call for all the decoding sequences (one new
   token each) and one for all the prefill chunks (several new tokens each): the keys of each
   sequence are gathered from its blocks into a padded `[B, n_kv_heads, L, head_dim]` view and
   a boolean mask (causal, sliding window from absolute positions, padding) selects what each
   query may see. Sliding-window layers gather only the blocks inside the window.

On the CPU, where the native kernels build, the decoding sequences (one new token each) go
through `native_attention.c` instead: keys and values read in place through the block tables
(no gathered copy, no mask), scores and softmax in float32, each sequence computed alone, so its
result does not depend on the batch. GPT-Neo-125M, 8 sequences after a shared ~300-token prefix,
bf16 KV, 2 threads: 0.14 ms per layer against ~0.3 for the gather / cascade paths; one sequence
0.023 against 0.093 ms. The torch paths below stay for CUDA, for prefill chunks and without a C
compiler.

The gather plans and masks depend only on the window size, so they are built once per step per
distinct window and shared by all layers with that window. GQA keeps K/V unrepeated: the query
heads sharing a KV head become extra query rows. GPT-Neo's unscaled float32 attention and
Gemma's softcap go through the same call (`scale`, `fp32`, `softcap`). Nothing here assumes a
device: every tensor is created on the pool's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fewshot.models import native
from fewshot.models.attention_decode import attend_single, cascade
from fewshot.models.attention_native import native_attend
from fewshot.models.kv_pool import KVPool

NATIVE_PREFILL_TOKENS = 64  # prefill chunks up to this long attend per query in the native kernel
# the native kernel's inputs for some queries: their rows of the batch (None: all, in order),
# block tables [R, W] and (first, end) positions (int32 [R] each)
NativeInputs = tuple[torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Plan:
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
class _Group:
    """Sequences of one kind in the flattened batch (decodes: T == 1; prefills: T >= 1)."""

    rows: torch.Tensor  # [B, T] row of each query in the flattened batch (padding: 0)
    valid: torch.Tensor  # [B, T] False for padding queries
    q_pos: torch.Tensor  # [B, T] absolute position of each query
    tables: torch.Tensor  # [B, max_blocks] block tables, padded with each row's last block
    n_blocks: torch.Tensor  # [B] blocks in use (covering positions < q_pos.max + 1)
    plans: dict[int | None, _Plan] = field(default_factory=dict)
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
class AttentionMetadata:
    """Everything attention needs about one step's batch; built once, read by every layer."""

    pool: KVPool | None
    slot_mapping: torch.Tensor  # [N] pool slot of each new token
    query_start: list[int]  # [B + 1] offsets of each sequence's tokens in the batch
    start_pos: list[int]  # [B] position of each sequence's first new token
    seq_ids: list[int] = field(default_factory=list)  # [B] engine ids (for stateful models)
    decode: _Group | None = None
    prefill: _Group | None = None
    order: torch.Tensor | None = None  # [N] output row of each (decode rows, then prefill rows)
    single: list[int] | None = None  # the block table when the batch is one decoding sequence
    # the native kernel's inputs for the one decoding sequence, per window (`NativeInputs`)
    native_inputs: dict[int | None, NativeInputs] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.query_start[-1]

    @property
    def attends_natively(self) -> bool:
        """Whether the native kernel (where it runs) attends every query of the batch on its
        own: decodes and short prefill chunks (`_Group.attends_natively`)."""
        return self.single is not None or all(
            g is None or g.attends_natively for g in (self.decode, self.prefill)
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
        meta.decode = _group(dec, block_tables, start_pos, num_tokens, offsets, bs, device)
        meta.prefill = _group(pre, block_tables, start_pos, num_tokens, offsets, bs, device)
        rows = []
        for g in (meta.decode, meta.prefill):
            if g is not None:
                rows.append(g.rows[g.valid])
        meta.order = torch.cat(rows)
        return meta


def _group(
    members: list[int],
    block_tables: Sequence[Sequence[int]],
    start_pos: Sequence[int],
    num_tokens: Sequence[int],
    offsets: list[int],
    bs: int,
    device: torch.device,
) -> _Group | None:
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

    return _Group(
        rows=as_tensor(rows),
        valid=as_tensor(valid, torch.bool),
        q_pos=as_tensor(q_pos),
        tables=as_tensor(tables),
        n_blocks=as_tensor(n_blocks),
    )


def _plan(group: _Group, window: int | None, bs: int) -> _Plan:
    """The blocks each sequence must gather for `window`, and the query/key mask."""
    plan = group.plans.get(window)
    if plan is not None:
        return plan
    first_q = group.q_pos[:, 0]  # [B]
    last_block = group.n_blocks - 1  # [B]
    if window is None:
        lo = torch.zeros_like(first_q)
    else:
        lo = torch.clamp(first_q - window + 1, min=0) // bs  # first block any query can see
    shared = _shared_blocks(group)
    s0 = min(int(lo.min()), shared)
    if shared > s0:  # cascade: blocks s0..shared once for all, each sequence's own from there
        lo = torch.clamp(lo, min=shared)
    count = last_block - lo + 1
    nb = int(count.max())
    j = torch.arange(nb, device=first_q.device)
    block_idx = torch.minimum(lo[:, None] + j[None, :], last_block[:, None])  # [B, nb]
    blocks = group.tables.gather(1, block_idx)
    k_pos = (lo[:, None] * bs + torch.arange(nb * bs, device=first_q.device)[None, :])[:, None, :]
    q = group.q_pos[:, :, None]  # [B, T, 1]
    diff = q - k_pos  # [B, T, L]
    allowed = (diff >= 0) & (k_pos < (lo + count)[:, None, None] * bs)
    if window is not None:
        allowed &= diff < window
    allowed &= group.valid[:, :, None]
    allowed[:, :, 0] |= ~group.valid  # padding queries see one key (avoids an all-masked row)
    plan = _Plan(blocks=blocks, mask=allowed[:, None])
    if shared > s0:
        plan.shared = group.tables[0, s0:shared]
        steps = plan.shared[1:] - plan.shared[:-1]
        if bool((steps == 1).all()):
            plan.shared_first = int(plan.shared[0])
        if window is not None:  # each query sees the shared keys inside its own window
            pos = s0 * bs + torch.arange((shared - s0) * bs, device=first_q.device)
            plan.shared_mask = (pos[None, :] > (first_q - window)[:, None])[:, None, None, :]
    group.plans[window] = plan
    return plan


def _shared_blocks(group: _Group) -> int:
    """Leading blocks that every sequence of a decode group (two or more) has in common; each
    keeps at least its last block (being written) to itself."""
    if group.size < 2 or group.rows.shape[1] != 1:
        return 0
    limit = int(group.n_blocks.min()) - 1
    if limit <= 0:
        return 0
    same = (group.tables[:, :limit] == group.tables[:1, :limit]).all(0)  # [limit]
    return limit if bool(same.all()) else int((~same).nonzero()[0, 0])


def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """cache [Hkv, NB, bs, D], blocks [B, nb] -> [Hkv, B, nb * bs, D] (one copy)."""
    b, nb = blocks.shape
    h, _, bs, d = cache.shape
    out = cache.index_select(1, blocks.reshape(-1))  # [Hkv, B * nb, bs, D]
    return out.view(h, b, nb * bs, d)


def _softcap_sdpa(q, k, v, mask, scale: float, softcap: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def _attend_group(
    q: torch.Tensor,
    group: _Group,
    plan: _Plan,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    scale: float | None,
    softcap: float | None,
    fp32: bool,
) -> torch.Tensor:
    """Queries of one group -> outputs [rows, Hq, D] in the group's valid-row order."""
    n_kv, head_dim = k_cache.shape[0], k_cache.shape[-1]
    b, t = group.rows.shape
    n_heads = q.shape[1]
    g = n_heads // n_kv
    qb = q[group.rows]  # [B, T, Hq, D]
    # [B, Hkv, G*T, D]: query head h = kv * G + gi, row gi * T + t
    qb = qb.permute(0, 2, 1, 3).reshape(b, n_kv, g * t, head_dim)
    k = _gather(k_cache, plan.blocks)  # [Hkv, B, L, D]
    v = _gather(v_cache, plan.blocks)
    if plan.shared is not None:
        return cascade(qb, k, v, plan, k_cache, v_cache, scale=scale, softcap=softcap, fp32=fp32)
    k, v = k.transpose(0, 1), v.transpose(0, 1)  # [B, Hkv, L, D]
    mask = plan.mask if g == 1 else plan.mask.repeat(1, 1, g, 1)  # [B, 1, G*T, L]
    out_dtype = q.dtype
    if fp32 and (softcap is not None or k.device.type != "cpu"):
        qb, k, v = qb.float(), k.float(), v.float()
    else:  # SDPA's CPU flash kernel keeps bf16 inputs' scores and softmax in float32 itself
        qb = qb.to(k.dtype)
    if softcap is not None:
        eff = scale if scale is not None else head_dim**-0.5
        out = _softcap_sdpa(qb, k, v, mask, eff, softcap)
    else:
        out = F.scaled_dot_product_attention(qb, k, v, attn_mask=mask, scale=scale)
    out = out.to(out_dtype).reshape(b, n_heads, t, head_dim).transpose(1, 2)  # [B, T, Hq, D]
    return out[group.valid]  # [rows, Hq, D]


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn: AttentionMetadata,
    layer: int,
    *,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    fp32: bool = False,
) -> torch.Tensor:
    """Store the batch's new K/V in the pool and attend every query: one call per group.

    q [N, Hq, D], k/v [N, Hkv, D] (rotated where the family uses rotary embeddings).
    `window`: a query at position p sees keys p - window + 1 .. p (None: all keys <= p).
    `scale`: multiplier of q.k (None: 1/sqrt(D)); `softcap`: tanh cap on the scores;
    `fp32`: scores and softmax in float32 (GPT-Neo, GPT-J), as transformers computes them for a
    bf16 model. On the CPU, SDPA's flash kernel does so for bf16 inputs by itself (scores and
    softmax in float32, probabilities rounded to bf16 for the values, as transformers does), 2-2.5x
    faster than on inputs converted to float32 (12 heads, 341 x 341 tokens: 0.76 against 1.95 ms,
    same error against float64); the decode paths use `attention_decode.math_dtypes`.
    Returns [N, Hq * D] in q's dtype.
    """
    pool = attn.pool
    if pool is None:
        raise ValueError("paged attention needs a KV pool")
    k_cache, v_cache = pool.k[layer], pool.v[layer]
    n_kv, nblocks, bs, head_dim = k_cache.shape
    flat_k = k_cache.view(n_kv, nblocks * bs, head_dim)
    flat_v = v_cache.view(n_kv, nblocks * bs, head_dim)
    flat_k.index_copy_(1, attn.slot_mapping, k.transpose(0, 1).to(k_cache.dtype))
    flat_v.index_copy_(1, attn.slot_mapping, v.transpose(0, 1).to(v_cache.dtype))
    kernel = _decode_kernel(k_cache)
    if attn.single is not None:
        if kernel is not None:
            return native_attend(kernel, q, attn, None, k_cache, v_cache, scale, window, softcap)
        return attend_single(q, attn, flat_k, flat_v, bs, scale, window, softcap, fp32)
    parts = []
    for group in (attn.decode, attn.prefill):
        if group is None:
            continue
        if kernel is not None and group.attends_natively:
            parts.append(
                native_attend(kernel, q, attn, group, k_cache, v_cache, scale, window, softcap)
            )
            continue
        plan = _plan(group, window, bs)
        parts.append(
            _attend_group(q, group, plan, k_cache, v_cache, scale=scale, softcap=softcap, fp32=fp32)
        )
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    n, n_heads, _ = q.shape
    if len(parts) > 1 or attn.prefill is not None:
        result = torch.empty(n, n_heads, head_dim, dtype=out.dtype, device=out.device)
        result[attn.order] = out
        out = result
    return out.reshape(n, n_heads * head_dim)


def _decode_kernel(k_cache: torch.Tensor) -> native.Kernel | None:
    """The native decode attention where it runs: a CPU pool in float32 or bfloat16."""
    if k_cache.device.type != "cpu" or k_cache.dtype not in (torch.float32, torch.bfloat16):
        return None
    return native.load()


def run_eagerly_under_compile() -> None:
    """Keep `paged_attention` out of torch.compile's graphs (its gather plans depend on tensor
    values): compiled regions end before it and resume after. Imports torch._dynamo, so only a
    runner that compiles calls it; the model families look the function up at call time."""
    global paged_attention
    if not getattr(paged_attention, "eager_under_compile", False):
        paged_attention = torch.compiler.disable(paged_attention)
        paged_attention.eager_under_compile = True  # type: ignore[attr-defined]
