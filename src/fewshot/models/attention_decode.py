"""The two decode paths of `paged_attention` that avoid gathering every sequence's keys.

- `attend_single`: the batch is one decoding sequence; its keys are read in place, as views of
  its runs of consecutive blocks (usually two: the cached prefix and its own blocks).
- `cascade`: decoding sequences share leading blocks (a cached few-shot prefix); every query
  meets the shared keys in one matmul (read once, in place when the blocks are consecutive),
  its own gathered keys in another, and one softmax covers both.
Both compute the attention of `attention.py`'s gather path (tests compare them to a naive
reference). Which dtype they multiply in: `math_dtypes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fewshot.models.attention import AttentionMetadata, _Plan


def runs(table: list[int], first: int, last: int, bs: int) -> list[tuple[int, int]]:
    """Pool slot ranges [s, e) holding positions first .. last - 1 of a sequence, one per run
    of consecutive block ids in its table (usually one or two: the cached prefix and the rest)."""
    out: list[tuple[int, int]] = []
    pos = first
    while pos < last:
        j = pos // bs
        k = j
        while (k + 1) * bs < last and table[k + 1] == table[k] + 1:
            k += 1
        end = min(last, (k + 1) * bs)
        start_slot = table[j] * bs + pos % bs
        out.append((start_slot, start_slot + end - pos))
        pos = end
    return out


def math_dtypes(cache: torch.Tensor, fp32: bool) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of the scores, dtype the probabilities meet the values in) of a decode's attention.

    On the CPU both are float32, whatever the cache holds: oneDNN builds a new bf16 matmul kernel
    for every new key length, and a decode's grows by one each step (GPT-Neo-125M's [12, 1, L] x
    [12, L, 64]: 0.63 ms a call with L changing, 0.05 ms with L fixed, 0.03 ms converted to
    float32 and multiplied by MKL; it also fills oneDNN's kernel cache). Elsewhere: scores in
    float32 when `fp32` (GPT-Neo, GPT-J) and the probabilities meet the values in the cache's
    dtype, as transformers does."""
    if cache.device.type == "cpu":
        return torch.float32, torch.float32
    return (torch.float32 if fp32 else cache.dtype), cache.dtype


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
    """One decoding sequence: its keys are read in place (views of its runs of blocks),
    scores concatenated, one softmax, the outputs summed over the runs. q [1, Hq, D]."""
    assert attn.single is not None
    length = attn.start_pos[0] + 1
    lo = max(0, length - window) if window is not None else 0
    n_kv, head_dim = flat_k.shape[0], flat_k.shape[-1]
    n_heads = q.shape[1]
    dtype, v_dtype = math_dtypes(flat_k, fp32)
    qg = q[0].reshape(n_kv, n_heads // n_kv, head_dim).to(dtype)  # [Hkv, G, D]
    spans = runs(attn.single, lo, length, bs)
    keys = [flat_k[:, s:e].to(dtype) for s, e in spans]  # views when no cast is needed
    values = [flat_v[:, s:e].to(v_dtype) for s, e in spans]
    eff = scale if scale is not None else head_dim**-0.5
    scores = torch.cat([torch.matmul(qg, k.transpose(1, 2)) for k in keys], dim=-1)
    if eff != 1.0:  # GPT-Neo does not scale
        scores = scores * eff
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
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
    plan: _Plan,
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
    dtype, v_dtype = math_dtypes(k_cache, fp32)
    q = qb.to(dtype).transpose(0, 1).contiguous()  # [Hkv, B, G, D]
    kp, k, vp, v = kp.to(dtype), k.to(dtype), vp.to(v_dtype), v.to(v_dtype)
    eff = scale if scale is not None else head_dim**-0.5
    s_shared = torch.matmul(q.view(n_kv, b * g, head_dim), kp.transpose(1, 2))
    s_own = torch.matmul(q, k.transpose(-1, -2))  # [Hkv, B, G, L]
    scores = torch.cat([s_shared.view(n_kv, b, g, -1), s_own], dim=-1)
    if eff != 1.0:
        scores = scores * eff
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    lp = kp.shape[1]
    # masks [B, 1, 1, L] -> [1, B, 1, L]
    scores[..., lp:].masked_fill_(~plan.mask.transpose(0, 1), float("-inf"))
    if plan.shared_mask is not None:
        scores[..., :lp].masked_fill_(~plan.shared_mask.transpose(0, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v_dtype)
    out = torch.matmul(probs[..., :lp].reshape(n_kv, b * g, lp), vp).float()
    out = out.view(n_kv, b, g, head_dim) + torch.matmul(probs[..., lp:], v).float()
    return out.to(qb.dtype).transpose(0, 1).reshape(b, n_kv * g, head_dim)
