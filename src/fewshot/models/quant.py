"""Weight-only int8 quantization for CPU decoding.

`Int8Linear` keeps a Linear's weight as int8 [out, in] with one symmetric scale per output
channel (w ~= q * scale, |q| <= 127). The matmul runs in `torch.ops.aten._weight_int8pack_mm`,
which reads the int8 weights directly (a quarter of the fp32 memory traffic, which is what bounds
decoding) and computes every output row on its own, so a row's result does not depend on which
other rows share the batch.

Measured on this torch build (2.13 CPU, 1 thread): that kernel is fast for bf16 inputs but runs
a slow path for fp32 inputs (5-20x slower than an fp32 Linear), and it crashes or returns garbage
for half-precision inputs whose in_features is not a multiple of 16. So:
- bf16 / fp16 inputs go straight to the kernel;
- fp32 inputs are rounded to bf16 for the kernel and the result is returned as fp32 (the int8
  rounding of the weights, ~0.5% relative, dominates the added bf16 rounding);
- the int8 weight is stored zero-padded to a multiple of `_KERNEL_K_MULTIPLE` input columns
  (inputs are zero-padded to match), so every size can use the kernel;
- where the kernel is missing, the weights are dequantized to the input dtype and F.linear is
  used (correct and slower, and then rows are not guaranteed batch-independent).

`quantize_model(model)` swaps every nn.Linear for an Int8Linear. The LM head is quantized as a
separate int8 copy by default (the input embedding stays float): it is the largest matrix of
small models (38.6M of GPT-Neo-125M's 125M weights), so this is much of the speed-up for them.
`cast_model` casts the float weights (int8 weights stay int8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# in_features must be a multiple of this for the int8 kernel (it breaks on 63 and 65 with bf16)
_KERNEL_K_MULTIPLE = 32


def _has_int8_kernel() -> bool:
    try:
        x = torch.ones(1, _KERNEL_K_MULTIPLE, dtype=torch.bfloat16)
        w = torch.ones(2, _KERNEL_K_MULTIPLE, dtype=torch.int8)
        y = torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(2, dtype=torch.bfloat16))
        return bool(torch.equal(y.float(), torch.full((1, 2), float(_KERNEL_K_MULTIPLE))))
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
        self.padded_in = -(-in_features // _KERNEL_K_MULTIPLE) * _KERNEL_K_MULTIPLE
        # [out, padded_in]; columns in_features.. are zero
        self.register_buffer("weight", torch.zeros(out_features, self.padded_in, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """An Int8Linear approximating `linear`; scales and bias keep the Linear's float dtype."""
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, scales = quantize_weight(linear.weight)
        dtype = linear.weight.dtype
        out.weight[:, : linear.in_features] = q
        out.scales = scales.to(dtype)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return out

    def _use_kernel(self, x: torch.Tensor) -> bool:
        return (
            _INT8_KERNEL
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [M, in]
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))  # [M, padded_in]
        if self._use_kernel(x2):
            kdtype = torch.bfloat16 if x.dtype == torch.float32 else x.dtype
            xk = x2.to(kdtype).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(xk, self.weight, self.scales.to(kdtype))
            y = y.to(x.dtype)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
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
