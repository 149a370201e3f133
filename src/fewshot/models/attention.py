"""The one attention call per layer that every native family uses: `paged_attention`.

The batch comes described by an `AttentionMetadata` (attention_metadata.py: the paged KV pool,
block tables, slots, the decode and prefill groups). Each attention layer calls
`paged_attention`, which
1. writes the new K/V of every sequence into the pool with one indexed copy per tensor, and
2. attends every query of the batch with one SDPA call for all the decoding sequences (one new
   token each) and one for all the prefill chunks (several new tokens each): the keys of each
   sequence are gathered from its blocks into a padded `[B, n_kv_heads, L, head_dim]` view and
   a boolean mask (causal, sliding window from absolute positions, padding) selects what each
   query may see. Sliding-window layers gather only the blocks inside the window.

On the CPU, where the native kernels build, the decoding sequences and short prefill chunks go
through `native_attention.c` instead (attention_native.py): keys and values read in place
through the block tables (no gathered copy, no mask), scores and softmax in float32, each query
computed on its own, so its result does not depend on the batch. GPT-Neo-125M, 8 sequences after
a shared ~300-token prefix, bf16 KV, 2 threads: 0.14 ms per layer against ~0.3 for the gather /
cascade paths; one sequence 0.023 against 0.093 ms. The torch paths stay for CUDA, for long
prefill chunks and without a C compiler.

The gather plans and masks depend only on the window size, so they are built once per step per
distinct window and shared by all layers with that window (`GatherPlan`, cached on the group).
GQA keeps K/V unrepeated: the query heads sharing a KV head become extra query rows. GPT-Neo's
unscaled float32 attention and Gemma's softcap go through the same call (`scale`, `fp32`,
`softcap`). Nothing here assumes a device: every tensor is created on the pool's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.models import native
from fewshot.models.attention_decode import attend_single, cascade, padded_step, scaled_scores
from fewshot.models.attention_metadata import AttentionMetadata, GatherPlan, QueryGroup
from fewshot.models.attention_native import native_attend


def _plan(group: QueryGroup, window: int | None, bs: int) -> GatherPlan:
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
    plan = GatherPlan(blocks=blocks, mask=allowed[:, None])
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


def _shared_blocks(group: QueryGroup) -> int:
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
    scores = scaled_scores(torch.matmul(q, k.transpose(-1, -2)), scale, softcap)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def _attend_group(
    q: torch.Tensor,
    group: QueryGroup,
    plan: GatherPlan,
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
    if attn.padded is not None:  # a fixed-shape batch (a CUDA graph's step)
        return padded_step(q, attn.padded, k_cache, v_cache, scale, window, softcap, fp32)
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
