"""Weight-only int8 quantization for CPU decoding.

`Int8Linear` keeps a Linear's weight as int8 [out, in] with one symmetric scale per output
channel (w ~= q * scale, |q| <= 127); activations stay float (fp32 or bf16). The matmul runs in
`torch.ops.aten._weight_int8pack_mm`, which reads the int8 weights directly (a quarter of the
fp32 memory traffic, which is what bounds decoding) and computes every output row on its own,
so a row's result does not depend on which other rows share the batch. Where that kernel is
unsafe (it crashes on bf16/fp16 inputs whose in_features is not a multiple of
`_KERNEL_K_MULTIPLE`) or unavailable, the same product is computed by dequantizing to the input
dtype and using F.linear: correct, but slower.

`quantize_model(model)` swaps every nn.Linear for an Int8Linear. The LM head is quantized as a
separate int8 copy by default (the input embedding stays float); it is the single largest matrix
of small models, so this is most of the speed-up for them. `cast_model` casts float weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# in_features multiple required before the int8 kernel is used with half-precision inputs
_KERNEL_K_MULTIPLE = 32


def _has_int8_kernel() -> bool:
    try:
        x = torch.ones(1, _KERNEL_K_MULTIPLE)
        w = torch.ones(2, _KERNEL_K_MULTIPLE, dtype=torch.int8)
        y = torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(2))
        return bool(torch.allclose(y, torch.full((1, 2), float(_KERNEL_K_MULTIPLE))))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_INT8_KERNEL = _has_int8_kernel()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (int8 [out, in], float32 scales [out]), symmetric per row."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + bias, with q int8 [out, in] and scale [out]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """An Int8Linear approximating `linear`; scales and bias keep the Linear's float dtype."""
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, scales = quantize_weight(linear.weight)
        dtype = linear.weight.dtype
        out.weight.copy_(q)
        out.scales = scales.to(dtype)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return out

    def _use_kernel(self, x: torch.Tensor) -> bool:
        if not _INT8_KERNEL or x.device.type != "cpu":
            return False
        if x.dtype == torch.float32:
            return True
        return x.dtype in (torch.bfloat16, torch.float16) and (
            self.in_features % _KERNEL_K_MULTIPLE == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [M, in]
        scales = self.scales.to(x.dtype)
        if self._use_kernel(x2):
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, scales)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * scales
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, kernel={_INT8_KERNEL}"
        )


def quantize_model(model: nn.Module, *, quantize_head: bool = True) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an Int8Linear; returns the model.

    `lm_head` is quantized as its own int8 copy when `quantize_head` (a tied embedding keeps its
    float weights for the input lookup); otherwise it stays float (and stays tied).
    """
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (quantize_head or name.split(".")[-1] != "lm_head")
    ]
    with torch.no_grad():
        for name, linear in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, Int8Linear.from_linear(linear))
    return model


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast float parameters and buffers to `dtype` (int8 weights stay int8); returns the model.

    Int8Linear scales follow the cast (as bf16 their rounding is below bf16 activation noise).
    """
    return model.to(dtype)
