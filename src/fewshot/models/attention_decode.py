"""The two decode paths of `paged_attention` that avoid gathering every sequence's keys.

- `attend_single`: the batch is one decoding sequence; its keys are read in place, as views of
  its runs of consecutive blocks (usually two: the cached prefix and its own blocks).
- `cascade`: decoding sequences share leading blocks (a cached few-shot prefix); every query
  meets the shared keys in one matmul (read once, in place when the blocks are consecutive),
  its own gathered keys in another, and one softmax covers both.
- `padded_step`: a fixed-shape batch (`PaddedStep`, a CUDA graph's): every sequence, with its
  T new tokens (1 for a decode), gathers all W blocks of its padded table and a mask hides what
  each query may not see.
All compute the attention of `attention.py`'s gather path (tests compare them to a naive
reference). On the CPU both run on SDPA's flash kernel (`_FLASH_CPU`, which also returns the
log-sum-exp of the scores, so attention over several sets of keys merges exactly); which
dtype the other paths multiply in: `math_dtypes`.
"""

from __future__ import annotations

import torch

from fewshot.models.attention_metadata import AttentionMetadata, GatherPlan, PaddedStep
from fewshot.models.kv_pool import runs


def math_dtypes(cache: torch.Tensor, fp32: bool) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of the scores, dtype the probabilities meet the values in) of a decode's attention
    outside the CPU's flash kernel (on the CPU: with a softcap, which that kernel lacks).

    On the CPU both are float32, whatever the cache holds: oneDNN builds a new bf16 matmul kernel
    for every new key length, and a decode's grows by one each step (GPT-Neo-125M's [12, 1, L] x
    [12, L, 64]: 0.63 ms a call with L changing, 0.05 ms with L fixed, 0.03 ms converted to
    float32 and multiplied by MKL; it also fills oneDNN's kernel cache). Elsewhere: scores in
    float32 when `fp32` (GPT-Neo, GPT-J) and the probabilities meet the values in the cache's
    dtype, as transformers does."""
    if cache.device.type == "cpu":
        return torch.float32, torch.float32
    return (torch.float32 if fp32 else cache.dtype), cache.dtype


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # (out, logsumexp)


def attend_single(
    q: torch.Tensor,
    attn: AttentionMetadata,
    flat_k: torch.Tensor,
    flat_v: torch.Tensor,
    bs: int,
    scale: float | None,
    window: int | None,
    softcap: float | None,
    fp32: bool,
) -> torch.Tensor:
    """One decoding sequence: its keys are read in place (views of its runs of blocks). On the
    CPU each run goes through SDPA's flash kernel in the cache's dtype (scores and softmax in
    float32 inside it) and the runs are merged by their log-sum-exps; elsewhere (and with a
    softcap) the scores are concatenated, one softmax, the outputs summed over the runs.
    q [1, Hq, D]."""
    assert attn.single is not None
    length = attn.start_pos[0] + 1
    lo = max(0, length - window) if window is not None else 0
    n_kv, head_dim = flat_k.shape[0], flat_k.shape[-1]
    n_heads = q.shape[1]
    spans = runs(attn.single, lo, length, bs)
    eff = scale if scale is not None else head_dim**-0.5
    if flat_k.device.type == "cpu" and softcap is None:  # each run through the flash kernel
        q4 = q[0].reshape(1, n_kv, n_heads // n_kv, head_dim).to(flat_k.dtype)
        out, lse = None, None
        for s, e in spans:
            o, part_lse = _FLASH_CPU(q4, flat_k[None, :, s:e], flat_v[None, :, s:e], scale=eff)[:2]
            out, lse = _merge(out, lse, o.float(), part_lse)
        assert out is not None
        return out.to(q.dtype).reshape(1, n_heads * head_dim)
    dtype, v_dtype = math_dtypes(flat_k, fp32)
    qg = q[0].reshape(n_kv, n_heads // n_kv, head_dim).to(dtype)  # [Hkv, G, D]
    keys = [flat_k[:, s:e].to(dtype) for s, e in spans]  # views when no cast is needed
    values = [flat_v[:, s:e].to(v_dtype) for s, e in spans]
    scores = torch.cat([torch.matmul(qg, k.transpose(1, 2)) for k in keys], dim=-1)
    scores = scaled_scores(scores, eff, softcap)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v_dtype)  # [Hkv, G, L]
    out = None
    at = 0
    for v in values:
        part = torch.matmul(probs[..., at : at + v.shape[1]], v).float()
        out = part if out is None else out + part
        at += v.shape[1]
    assert out is not None
    return out.to(q.dtype).reshape(1, n_heads * head_dim)


def cascade(
    qb: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: GatherPlan,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    scale: float | None,
    softcap: float | None,
    fp32: bool,
) -> torch.Tensor:
    """Decodes sharing leading blocks: every query against the shared keys in one matmul (read
    once, in place when the blocks are consecutive), against its own keys k/v [Hkv, B, L, D]
    (as gathered from the pool) under the plan's mask; one softmax over both.
    qb [B, Hkv, G, D] -> [B, Hq, D]. Works in [Hkv, B, G, ...] order throughout, the pool's
    head-major layout, so the gathered keys and values are multiplied in place."""
    assert plan.shared is not None
    b, n_kv, g, head_dim = qb.shape
    bs = k_cache.shape[2]
    if plan.shared_first is not None:  # a view of the pool
        s0 = plan.shared_first * bs
        kp = k_cache.view(n_kv, -1, head_dim)[:, s0 : s0 + len(plan.shared) * bs]
        vp = v_cache.view(n_kv, -1, head_dim)[:, s0 : s0 + len(plan.shared) * bs]
    else:  # one copy for all sequences
        kp = k_cache.index_select(1, plan.shared).reshape(n_kv, -1, head_dim)
        vp = v_cache.index_select(1, plan.shared).reshape(n_kv, -1, head_dim)
    eff = scale if scale is not None else head_dim**-0.5
    if k_cache.device.type == "cpu" and softcap is None:
        return _cascade_flash(qb, k, v, plan, kp, vp, eff)
    dtype, v_dtype = math_dtypes(k_cache, fp32)
    q = qb.to(dtype).transpose(0, 1).contiguous()  # [Hkv, B, G, D]
    kp, k, vp, v = kp.to(dtype), k.to(dtype), vp.to(v_dtype), v.to(v_dtype)
    s_shared = torch.matmul(q.view(n_kv, b * g, head_dim), kp.transpose(1, 2))
    s_own = torch.matmul(q, k.transpose(-1, -2))  # [Hkv, B, G, L]
    scores = torch.cat([s_shared.view(n_kv, b, g, -1), s_own], dim=-1)
    scores = scaled_scores(scores, eff, softcap)
    lp = kp.shape[1]
    # masks [B, 1, 1, L] -> [1, B, 1, L]
    scores[..., lp:].masked_fill_(~plan.mask.transpose(0, 1), float("-inf"))
    if plan.shared_mask is not None:
        scores[..., :lp].masked_fill_(~plan.shared_mask.transpose(0, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v_dtype)
    out = torch.matmul(probs[..., :lp].reshape(n_kv, b * g, lp), vp).float()
    out = out.view(n_kv, b, g, head_dim) + torch.matmul(probs[..., lp:], v).float()
    return out.to(qb.dtype).transpose(0, 1).reshape(b, n_kv * g, head_dim)


def _cascade_flash(
    qb: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: GatherPlan,
    kp: torch.Tensor,
    vp: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """`cascade` on the CPU: the shared keys and each sequence's own keys through SDPA's flash
    kernel, read in place in the cache's dtype (for bf16: scores and softmax in float32 inside
    the kernel, no converted copies), the two partial results merged by their log-sum-exps.
    GPT-Neo-125M, 8 sequences after a shared 288-token prefix: 0.32 -> 0.16 ms per layer."""
    b, n_kv, g, head_dim = qb.shape
    q = qb.to(kp.dtype)
    q_all = q.transpose(0, 1).reshape(1, n_kv, b * g, head_dim)
    shared_mask = plan.shared_mask
    shared_bias = None
    if shared_mask is not None:  # [B, 1, 1, Lp] -> one row per query of q_all
        shared_bias = plan.derive(
            "shared bias",
            lambda: _additive(shared_mask[:, 0, 0].repeat_interleave(g, 0)[None, None], q.dtype),
        )
    o_s, lse_s = _FLASH_CPU(q_all, kp[None], vp[None], attn_mask=shared_bias, scale=scale)[:2]
    own_bias = plan.derive("own bias", lambda: _additive(plan.mask, q.dtype))  # [B, 1, 1, L]
    o_o, lse_o = _FLASH_CPU(
        q, k.transpose(0, 1), v.transpose(0, 1), attn_mask=own_bias, scale=scale
    )[:2]
    o_s = o_s.view(n_kv, b, g, head_dim).transpose(0, 1)  # [B, Hkv, G, D]
    lse_s = lse_s.view(n_kv, b, g).transpose(0, 1)
    if shared_mask is not None:  # flash gives a query that sees no shared key lse 0
        blind = plan.derive("blind to shared", lambda: ~shared_mask.any(-1))  # [B, 1, 1]
        lse_s = lse_s.masked_fill(blind, float("-inf"))
    out, _ = _merge(o_s.float(), lse_s, o_o.float(), lse_o)
    return out.to(qb.dtype).reshape(b, n_kv * g, head_dim)


def scaled_scores(scores: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    """Raw scores q.k times `scale` (skipped at 1.0: GPT-Neo does not scale), then capped:
    softcap * tanh(s / softcap) where the family caps them."""
    if scale != 1.0:
        scores = scores * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    return scores


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: may see) as the flash kernel's additive 0 / -inf mask in `dtype`."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf")
    )


def _merge(
    out: torch.Tensor | None, lse: torch.Tensor | None, part: torch.Tensor, part_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over two disjoint sets of keys from each one's output [..., D] (float32) and
    log-sum-exp of its scores [...]: the attention over both, and its log-sum-exp."""
    if out is None or lse is None:
        return part, part_lse
    both = torch.logaddexp(lse, part_lse)
    merged = out * (lse - both).exp()[..., None] + part * (part_lse - both).exp()[..., None]
    return merged, both


def padded_step(
    q: torch.Tensor,
    padded: PaddedStep,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float | None,
    window: int | None,
    softcap: float | None,
    fp32: bool,
) -> torch.Tensor:
    """B sequences of T new tokens each, fixed shapes, no host data (a CUDA graph's step):
    q [B * T, Hq, D] against the W blocks of each padded table, masked by position and window.
    Returns [B * T, Hq * D]."""
    n_kv, _, bs, head_dim = k_cache.shape
    b, width = padded.tables.shape
    t = padded.q_pos.shape[1]
    n_heads = q.shape[1]
    g = n_heads // n_kv
    flat = padded.tables.reshape(-1)
    # [B, Hkv, L, D]: each sequence's blocks, in order
    k = k_cache.index_select(1, flat).view(n_kv, b, width * bs, head_dim).transpose(0, 1)
    v = v_cache.index_select(1, flat).view(n_kv, b, width * bs, head_dim).transpose(0, 1)
    # [B, Hkv, T * G, D]: query head h = kv * G + g of token j is row j * G + g of its KV head
    qb = q.view(b, t, n_kv, g, head_dim).transpose(1, 2).reshape(b, n_kv, t * g, head_dim)
    scores_dtype, values_dtype = math_dtypes(k_cache, fp32)
    eff = scale if scale is not None else head_dim**-0.5
    scores = torch.matmul(qb.to(scores_dtype), k.to(scores_dtype).transpose(-1, -2))
    # the mask [B, 1, T, L] broadcast over each token's G query heads: [B, Hkv, T, G, L]
    mask = padded.mask(window, bs)[:, :, :, None]
    scores = (
        scaled_scores(scores, eff, softcap)
        .view(b, n_kv, t, g, -1)
        .masked_fill(~mask, float("-inf"))
    )
    scores = scores.view(b, n_kv, t * g, -1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values_dtype)
    out = torch.matmul(probs, v.to(values_dtype))  # [B, Hkv, T * G, D]
    out = out.view(b, n_kv, t, g, head_dim).transpose(1, 2)  # [B, T, Hkv, G, D]
    return out.to(q.dtype).reshape(b * t, n_heads * head_dim)
