"""`paged_attention`'s native path: queries attended one by one (or a prefill chunk's together)
by `native_attention.c`, keys and values read in place through the block tables.

The kernel's inputs (per-query block tables and [first, end) positions) depend on the batch and
the window only, so they are built by the first layer that asks and shared by the others (on
the metadata for the single-sequence case, on the group otherwise).
"""

from __future__ import annotations

import torch

from fewshot.models import native
from fewshot.models.attention_metadata import AttentionMetadata, QueryGroup


def native_attend(
    kernel: native.Kernel,
    q: torch.Tensor,
    attn: AttentionMetadata,
    group: QueryGroup | None,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float | None,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """The queries of `group` (decodes or short prefill chunks; the batch's one decoding
    sequence when None) through the native kernel, each on its own, keys read in place:
    [rows, Hq, D] in q's dtype, the group's valid-row order (the single case: [1, Hq * D])."""
    store = attn.native_inputs if group is None else group.native
    found = store.get(window)
    if found is None:
        if group is None:
            index, (tables, hi) = None, attn.native_rows()
        else:
            index, tables, hi = group.native_rows()
        lo = torch.zeros_like(hi) if window is None else torch.clamp(hi - window, min=0)
        found = store[window] = (index, tables, (lo, hi))
    index, tables, bounds = found
    rows = q if index is None else q[index]
    head_dim = q.shape[-1]
    eff = scale if scale is not None else head_dim**-0.5
    out = kernel.decode_attention(
        rows.float().contiguous(), k_cache, v_cache, tables, bounds, eff, softcap
    ).to(q.dtype)
    return out.reshape(1, -1) if group is None else out
