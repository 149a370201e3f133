"""int8 weights for CPU inference, with results that do not depend on the batch.

`Int8Linear` keeps a Linear's weight as int8 [out, in] with one symmetric scale per output
channel (w ~= q * scale, |q| <= 127) and runs the matmul in fbgemm's int8 GEMM
(`torch.ops.quantized.linear_dynamic`): int8 weights are a quarter of the fp32 memory traffic,
and the kernel is several times faster than the fp32 GEMM at the small row counts of decoding
(measured in `BENCHMARKS.md`; `torch.ops.aten._weight_int8pack_mm` was slower and, for some
shapes, returned NaN on this CPU).

fbgemm quantizes its input activations to 8 bits with ONE range for the whole batch, which would
make a row's result depend on the other rows (the classic problem of dynamic quantization with
prefix caching and continuous batching). We make that range constant instead:
- each row x is divided by its own absmax a (so every value lies in [-1, 1]);
- two extra input columns holding +1 and -1 are appended (their weights are zero), so every row
  spans exactly [-1, 1] and the batch-wide range is always [-1, 1];
- the int32 accumulation is exact, so each output row is bitwise the same whatever shares the
  batch; the output is multiplied back by a, then the bias is added.
The activations are thus quantized per row (7-bit, fbgemm's reduce_range avoids int16
saturation), which is what weight-plus-activation int8 engines do; the top-1 agreement with fp32
is measured by the tests and reported by the benchmark.

`quantize_model(model)` swaps every nn.Linear for an Int8Linear. The LM head is quantized as a
separate int8 copy by default (the input embedding stays float): it is the largest matrix of
small models (38.6M of GPT-Neo-125M's 125M weights).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# fbgemm sums pairs of u8*s8 products in int16: full-range activations saturate (measured: 12%
# error on Gaussian inputs), so activations use 7 bits as fbgemm recommends on x86.
_REDUCE_RANGE = True


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (int8 [out, in], float32 scales [out]), symmetric per row."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def _prepack(q: torch.Tensor, scales: torch.Tensor) -> object:
    """fbgemm packed weight of [q | 0 0] (two zero columns for the range-pinning inputs)."""
    padded = torch.cat([q, torch.zeros(q.shape[0], 2, dtype=torch.int8)], dim=1)  # [out, in+2]
    with warnings.catch_warnings():  # quantized tensor creation is deprecated, still supported
        warnings.simplefilter("ignore", UserWarning)
        qw = torch._make_per_channel_quantized_tensor(
            padded, scales.double(), torch.zeros(q.shape[0], dtype=torch.long), 0
        )
    return torch.ops.quantized.linear_prepack(qw, None)


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + bias, q int8 [out, in], scale [out]; batch-independent rows."""

    weight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight", q)  # int8 [out, in]
        self.register_buffer("scales", scales.float())  # [out]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self._packed = _prepack(q, self.scales)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """An Int8Linear approximating `linear`."""
        q, scales = quantize_weight(linear.weight)
        return cls(q, scales, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype (computed in fp32 around the int8 GEMM)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()  # [M, in]
        a = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)  # [M, 1]
        pins = torch.tensor([[1.0, -1.0]]).expand(x2.shape[0], 2)  # [M, 2]
        xp = torch.cat([x2 / a, pins], dim=1)  # [M, in + 2], every row spans [-1, 1]
        y = torch.ops.quantized.linear_dynamic(xp, self._packed, _REDUCE_RANGE) * a  # [M, out]
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def _apply(self, fn, recurse: bool = True):  # keep int8/scales as they are under .to(dtype)
        q, scales = self.weight, self.scales
        out = super()._apply(fn, recurse)
        self.weight, self.scales = q, scales
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
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
    """Cast float parameters and buffers to `dtype` (int8 weights and scales stay); returns it."""
    return model.to(dtype)
