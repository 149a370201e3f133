"""Building blocks shared by the native model families.

Everything here works on a *flattened* batch: N tokens of several sequences stacked along the
first dimension ([N, ...]); attention over the paged KV pool is in `attention.py`.

Contents:
- norms: `RMSNorm` (Llama), `GemmaRMSNorm` (weights stored as w, applied as 1 + w, in float32),
  `LayerNorm` (GPT-Neo); float32 CPU rows go through the native kernels
- rotary embeddings in the Hugging Face "rotate_half" convention: `rope_inv_freq`, `RotaryEmbedding`,
  `apply_rotary`; on the first R dims of each head only (`apply_partial_rotary`, GPT-NeoX), or in
  GPT-J's interleaved "rotate every two" convention (`interleaved_rope` + `apply_partial_rotary`)
- `activation`: the MLP activations named by transformers configs
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.models import native

# ---------------------------------------------------------------------------------------------
# norms


class RMSNorm(nn.Module):
    """Llama RMSNorm: normalise in float32, cast back, then multiply by the weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (kernel := native.usable(x, self.weight)) is not None:  # float32 on the CPU
            return kernel.rms_norm(x, self.weight, 0.0, self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class GemmaRMSNorm(nn.Module):
    """Gemma RMSNorm: the stored weight w is applied as (1 + w); the whole norm runs in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (kernel := native.usable(x, self.weight)) is not None:  # float32 on the CPU
            return kernel.rms_norm(x, self.weight, 1.0, self.eps)
        scale = 1.0 + self.weight.float()
        return F.rms_norm(x.float(), (x.shape[-1],), scale, eps=self.eps).type_as(x)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters), computed by the native kernel for float32 CPU rows (the
    fused decode step runs the same function)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.weight is not None
            and self.bias is not None
            and (kernel := native.usable(x, self.weight, self.bias)) is not None
        ):
            return kernel.layer_norm(x, self.weight, self.bias, self.eps)
        return super().forward(x)


# ---------------------------------------------------------------------------------------------
# activations


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    if (kernel := native.usable(x)) is not None:  # float32 on the CPU: the fused step's kernel
        return kernel.act(x, "gelu_tanh")
    return F.gelu(x, approximate="tanh")


def _silu(x: torch.Tensor) -> torch.Tensor:
    if (kernel := native.usable(x)) is not None:
        return kernel.act(x, "silu")
    return F.silu(x)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu": F.gelu,
    "silu": _silu,
    "swish": _silu,
    "relu": F.relu,
}
# the activations the native kernels compute (`native.ACTS`), for the fused decode step
NATIVE_ACTS = {_gelu_tanh: "gelu_tanh", _silu: "silu"}


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

    inv_freq: torch.Tensor

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
    if (kernel := native.usable(x, cos, sin)) is not None and x.shape[-1] % 2 == 0:
        return kernel.rope(x, cos, sin)  # one call instead of ~8 operators (a decode step's)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + rotate_half(x) * sin


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """GPT-J's rotation: pairs (0, 1), (2, 3), ... of the last dim become (-x1, x0)."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def interleaved_rope(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`RotaryEmbedding`'s (cos, sin) [N, R] (frequencies as [f, f]) in GPT-J's interleaved
    layout (each frequency repeated in place: [f0, f0, f1, f1, ...]), for `apply_partial_rotary`
    with `interleaved=True`."""
    half = cos.shape[-1] // 2
    return cos[:, :half].repeat_interleave(2, -1), sin[:, :half].repeat_interleave(2, -1)


def apply_partial_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False
) -> torch.Tensor:
    """x [N, H, D], cos/sin [N, R] with R <= D -> x with its first R dims per head rotated and
    the other D - R dims passed through. `interleaved`: GPT-J's "rotate every two" convention
    (cos/sin from `interleaved_rope`) instead of rotate_half's."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    turn = rotate_every_two(rot) if interleaved else rotate_half(rot)
    rot = rot * cos[:, None, :] + turn * sin[:, None, :]
    return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


# ---------------------------------------------------------------------------------------------
# config helpers


def as_id_list(value: int | list[int] | None) -> list[int]:
    """A config's token id field (an int, a list or None) as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


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
