"""Building blocks shared by the native model families.

Everything here works on a *flattened* batch: N tokens of several sequences stacked along the
first dimension ([N, ...]), with `counts[i]` tokens belonging to sequence i and `caches[i]` holding
that sequence's keys and values. Linear layers and norms never care about the split; only
attention (`cached_attention`) walks the sequences one by one.

Contents:
- norms: `RMSNorm` (Llama), `GemmaRMSNorm` (weights stored as w, applied as 1 + w, in float32)
- rotary embeddings in the Hugging Face "rotate_half" convention: `rope_inv_freq`, `RotaryEmbedding`
- `sequence_positions`, `last_token_indices`: bookkeeping of the flattened batch
- `cached_attention`: write new K/V into each sequence's cache and attend its queries against it
  (causal, optional sliding window from absolute positions, GQA, optional scale / softcap)
- `activation`: the MLP activations named by transformers configs
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.models.base import KVCache

# ---------------------------------------------------------------------------------------------
# norms


class RMSNorm(nn.Module):
    """Llama RMSNorm: normalise in float32, cast back, then multiply by the weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class GemmaRMSNorm(nn.Module):
    """Gemma RMSNorm: the stored weight w is applied as (1 + w); the whole norm runs in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).type_as(x)


# ---------------------------------------------------------------------------------------------
# activations


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function a transformers config names (e.g. "gelu_new", "silu")."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unsupported activation {name!r}; known: {sorted(_ACTIVATIONS)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# rotary embeddings


def rope_inv_freq(params: Mapping[str, Any], head_dim: int) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] for a transformers `rope_parameters` dict.

    Supports rope_type "default", "linear" (positions divided by `factor`) and "llama3".
    """
    rope_type = params.get("rope_type", "default")
    base = float(params["rope_theta"])
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    if dim != head_dim:
        raise ValueError("partial rotary embeddings are not supported")
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(params["factor"])
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, params)
    raise ValueError(f"unsupported rope_type {rope_type!r}")


def _llama3_inv_freq(inv_freq: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    factor = float(params["factor"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    old_len = float(params["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for absolute positions; `inv_freq` is a non-persistent buffer."""

    def __init__(self, inv_freq: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N] -> (cos, sin), each [N, head_dim] in `dtype`."""
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]  # [N, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [N, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D], cos/sin [N, D] -> x rotated, [N, H, D]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------------------------
# flattened-batch bookkeeping


def as_id_list(value: int | list[int] | None) -> list[int]:
    """A config's token id field (an int, a list or None) as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def advance_caches(caches: Sequence[KVCache], counts: Sequence[int]) -> None:
    """After a forward: every sequence's cache now holds its new tokens."""
    for cache, n in zip(caches, counts, strict=True):
        cache.advance(n)


def check_batch(input_ids: torch.Tensor, caches: Sequence[KVCache], counts: Sequence[int]) -> None:
    """Raise ValueError unless input_ids [N], caches and counts describe one flattened batch."""
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be 1-D [N], got shape {tuple(input_ids.shape)}")
    if len(caches) != len(counts):
        raise ValueError(f"{len(caches)} caches but {len(counts)} counts")
    if any(c < 1 for c in counts):
        raise ValueError(f"every count must be >= 1, got {list(counts)}")
    if sum(counts) != input_ids.shape[0]:
        raise ValueError(f"counts sum to {sum(counts)} but input_ids has {input_ids.shape[0]}")


def sequence_positions(caches: Sequence[KVCache], counts: Sequence[int]) -> torch.Tensor:
    """Absolute positions [N] (long): sequence i's tokens start at caches[i].length."""
    if len(counts) == 1:
        start = caches[0].length
        return torch.arange(start, start + counts[0])
    return torch.cat(
        [torch.arange(c.length, c.length + n) for c, n in zip(caches, counts, strict=True)]
    )


def last_token_indices(counts: Sequence[int]) -> torch.Tensor:
    """Index [B] of each sequence's last token in the flattened batch."""
    return torch.tensor(counts).cumsum(0) - 1


def select_logits(hidden: torch.Tensor, counts: Sequence[int], which: str) -> torch.Tensor:
    """hidden [N, C] -> [B, C] (each sequence's last token) for "last", unchanged for "all"."""
    if which == "all":
        return hidden
    if which != "last":
        raise ValueError(f"logits must be 'last' or 'all', got {which!r}")
    if len(counts) == hidden.shape[0]:
        return hidden
    return hidden[last_token_indices(counts)]


# ---------------------------------------------------------------------------------------------
# attention


def _window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask [t, L]: True where query position q may see key position k."""
    diff = q_pos[:, None] - k_pos[None, :]  # [t, L]
    allowed = diff >= 0
    if window is not None:
        allowed &= diff < window
    return allowed


def _softcap_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """Explicit attention with tanh-capped scores. q [B, H, T, D], k/v [B, H, L, D]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, T, L]
    scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def _attend_one(
    q: torch.Tensor,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    start: int,
    *,
    scale: float | None,
    window: int | None,
    softcap: float | None,
    fp32: bool,
) -> torch.Tensor:
    """Attention of one sequence.

    q [t, Hq, D] (positions start .. start+t-1); k_all/v_all [Hkv, start+t, D] (the cache).
    Returns [t, Hq, D].
    """
    t, n_heads, head_dim = q.shape
    n_kv = k_all.shape[0]
    group = n_heads // n_kv
    end = start + t
    # keys older than the window of the first query can never be seen: drop them
    lo = max(0, start - window + 1) if window is not None else 0
    k = k_all[:, lo:end]  # [Hkv, L, D]
    v = v_all[:, lo:end]
    # GQA without copying K/V: the `group` query heads sharing a KV head become extra query rows
    qg = q.permute(1, 0, 2).reshape(n_kv, group * t, head_dim)  # [Hkv, G*t, D]
    out_dtype = v.dtype
    if fp32:
        qg, k, v = qg.float(), k.float(), v.float()
    else:
        qg = qg.to(k.dtype)

    mask: torch.Tensor | None = None
    is_causal = False
    if t > 1:
        if group == 1 and start == 0 and window is None and softcap is None:
            # square causal: SDPA's top-left alignment is right (not with grouped query rows)
            is_causal = True
        else:
            q_pos = torch.arange(start, end)
            k_pos = torch.arange(lo, end)
            mask = _window_mask(q_pos, k_pos, window).repeat(group, 1)  # [G*t, L]
    # with t == 1 every key in [lo, end) is visible: no mask needed

    qg, k, v = qg[None], k[None], v[None]  # [1, Hkv, *, D]
    if softcap is not None:
        eff_scale = scale if scale is not None else head_dim**-0.5
        out = _softcap_attention(qg, k, v, mask, eff_scale, softcap)
    else:
        out = F.scaled_dot_product_attention(
            qg, k, v, attn_mask=mask, is_causal=is_causal, scale=scale
        )
    out = out[0].to(out_dtype)  # [Hkv, G*t, D]
    return out.reshape(n_heads, t, head_dim).permute(1, 0, 2)  # [t, Hq, D]


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    caches: Sequence[KVCache],
    counts: Sequence[int],
    layer: int,
    *,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    fp32: bool = False,
) -> torch.Tensor:
    """Write the new K/V of every sequence into its cache and attend its queries against it.

    q [N, Hq, D], k/v [N, Hkv, D] (already rotated where the family uses rotary embeddings).
    Sequence i owns rows sum(counts[:i]) .. +counts[i] and positions caches[i].length ... .
    `window`: a query at position p sees keys at positions p - window + 1 .. p (None: all <= p).
    `scale`: multiplier of q.k (None: 1/sqrt(D)). `fp32`: compute in float32 (GPT-Neo).
    Returns [N, Hq * D] in v's dtype. Caches are *not* advanced (the model does that once).
    """
    n, n_heads, head_dim = q.shape
    out = torch.empty(n, n_heads, head_dim, dtype=v.dtype)
    row = 0
    for cache, t in zip(caches, counts, strict=True):
        start = cache.length
        k_all, v_all = cache.write(
            layer, k[row : row + t].transpose(0, 1), v[row : row + t].transpose(0, 1)
        )  # [Hkv, start + t, D]
        out[row : row + t] = _attend_one(
            q[row : row + t],
            k_all,
            v_all,
            start,
            scale=scale,
            window=window,
            softcap=softcap,
            fp32=fp32,
        )
        row += t
    return out.reshape(n, n_heads * head_dim)


# ---------------------------------------------------------------------------------------------
# loading


def load_hf_state_dict(
    model: nn.Module, sd: Mapping[str, torch.Tensor], tied: Mapping[str, str] | None = None
) -> None:
    """Copy a Hugging Face-named state dict into `model`, checking names and shapes.

    Every key of `model.state_dict()` must be in `sd` with the same shape, except the keys in
    `tied` (tied key -> source key), which may be missing and are then shared with their source.
    Extra keys in `sd` (non-persistent buffers of the HF model, e.g. masks or rotary tables) are
    ignored. Values are cast to the dtype of the model's tensors. Raises KeyError / ValueError.
    """
    tied = dict(tied or {})
    own = model.state_dict(keep_vars=True)
    missing = [k for k in own if k not in sd and k not in tied]
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise KeyError(f"state dict lacks {len(missing)} expected key(s): {shown}")
    bad = [
        f"{k}: expected {tuple(own[k].shape)}, got {tuple(sd[k].shape)}"
        for k in own
        if k in sd and k not in tied and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise ValueError("state dict shape mismatch: " + "; ".join(bad[:8]))
    with torch.no_grad():
        for key, dst in own.items():
            if key in tied:
                continue
            dst.copy_(sd[key])
