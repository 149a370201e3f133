"""The small native kernels give the bits of the torch code they replace."""

from __future__ import annotations

import pytest
import torch

from fewshot.models import layers, native

NATIVE = native.load()


@pytest.mark.skipif(NATIVE is None, reason="no C compiler")
@pytest.mark.parametrize("shape", [(1, 4, 256), (7, 3, 64), (5, 2, 10)])
def test_rope_kernel_equals_torch(shape) -> None:
    torch.manual_seed(0)
    n, h, d = shape
    x = torch.randn(n, h, d) * 10
    freqs = (
        torch.arange(n).float()[:, None]
        * layers.rope_inv_freq({"rope_type": "default", "rope_theta": 1e4}, d)[None, :]
    )
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    c, s = cos[:, None, :], sin[:, None, :]
    want = x * c + layers.rotate_half(x) * s  # the torch formula apply_rotary replaces
    assert NATIVE is not None
    assert torch.equal(NATIVE.rope(x, cos, sin), want)
    assert torch.equal(layers.apply_rotary(x, cos, sin), want)  # which takes the kernel
    assert native.usable(x.bfloat16(), cos, sin) is None  # other dtypes stay on torch
