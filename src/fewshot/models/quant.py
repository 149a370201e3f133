"""int8 weights for CPU inference that keep fp32's quality and do not depend on the batch.

`Int8Linear` replaces an nn.Linear (same call: x [..., in] -> [..., out]). Its weight is int8
[out, in] with one symmetric scale per output channel (w ~= q * scale, |q| <= 127): a quarter of
fp32's memory traffic, which is what decoding is bound by.

The matmul runs in an integer GEMM (fbgemm on x86: AVX2, AVX-512 and AVX-512 VNNI kernels, picked
by fbgemm from the CPU at run time). Integer GEMMs need integer activations, and quantizing
activations to 8 bits is what cost the previous int8 path its quality (81-85% top-1 agreement
with fp32). So the activations are not rounded to 8 bits; they are split into *limbs*:

    x = a * (q1 + q2 / 126),  a = absmax(row) / 63,  q1 = round(x / a),  q2 = round((x/a - q1) * 126)

with q1, q2 integers in [-63, 63]. Both limbs go through the GEMM as extra rows of the same call
(2M rows instead of M: at decode sizes the weight read dominates, so this costs 10-30% more GEMM
time, not 2x; measured by `fewshot.bench.int8_kernels`) and the results are recombined in fp32: y = a * (acc1 + acc2 / 126) * scale. The activation error is then at most
1/(2 * 63 * 126) of the row's absmax (~14 bits), below the weight rounding error, so the result
is as close to fp32 as weight-only int8 can be.

Properties this gives:
- batch independence: each row has its own scale `a`, the int32 accumulation is exact and the
  recombination is elementwise, so a row's output is bitwise the same whatever shares the batch;
- the same numbers on every x86 host: 7-bit limbs (|q| <= 63, offset by 64 into [1, 127]) never
  saturate the int16 pair sums of the non-VNNI kernels (vpmaddubsw), so AVX2 and VNNI hosts
  compute identical int32 sums (by construction; only AVX-512 hosts were measured);
- one weight copy in memory: the packed fbgemm matrix (the plain int8 weight is released).
Without fbgemm (non-x86 builds) the "reference" kernel (`torch._weight_int8pack_mm` on fp32
activations) gives the same results up to rounding, slowly.

Weights take one or two int8 planes (w ~= q1 * s1 + q2 * s2, the second plane quantizing the
first one's rounding error: `planes_for`): one per-channel int8 plane alone moved Gemma 3 270M's
top-1 agreement with fp32 to 95.9% (its weights come from a 4-bit GGUF, whose block structure a
per-row grid fits badly); two planes on the projections that write into the residual stream
bring it to 98.6% for 9% more weight bytes. The LM head has one plane and, when it is tied to
the float input embedding, recomputes every output that could be the row's maximum from that
embedding in fp32 (those within 12 sigma of an error model), so its argmax is the float head's.

`quantize_model(model)` swaps every nn.Linear for an Int8Linear, the LM head included (on Gemma 3
270M it is 168M of the 268M weights); a tied input embedding keeps its float weights.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
from torch import nn

RESCORE_CAP = 64  # most outputs per row recomputed in fp32 by a rescored head
LIMB = 63  # |q| of one activation limb: 7 bits, safe from int16 saturation on every x86 kernel
_ZERO_POINT = LIMB + 1  # limbs enter the u8 GEMM as q + 64, in [1, 127]


@cache
def select_kernel() -> str:
    """The integer GEMM for this CPU: "fbgemm" on x86 (it picks AVX2/AVX-512/VNNI code itself),
    else "reference" (dequantize the weight per call; correct everywhere, not fast)."""
    x86 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return (
        "fbgemm" if x86 and "fbgemm" in torch.backends.quantized.supported_engines else "reference"
    )


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (int8 [out, in], float32 scales [out]), symmetric per row."""
    return quantize_planes(weight, 1)


def quantize_planes(
    weight: torch.Tensor, planes: int, rows: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] -> (int8 [planes * out, in], scales [planes * out]): plane p quantizes
    what the planes before it left over, so weight ~= sum_p q_p * scale_p (symmetric per row).

    Works `rows` rows at a time, so the float temporaries stay small next to a large matrix."""
    out, k = weight.shape
    q = torch.empty(planes, out, k, dtype=torch.int8)
    scales = torch.empty(planes, out, dtype=torch.float32)
    with torch.no_grad():
        for i in range(0, out, rows):
            rest = weight[i : i + rows].detach().to(torch.float32, copy=True)
            for p in range(planes):
                s = rest.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [rows]
                qp = torch.round(rest / s[:, None]).clamp_(-127, 127)
                q[p, i : i + rows] = qp
                scales[p, i : i + rows] = s
                if p + 1 < planes:
                    rest -= qp.mul_(s[:, None])
    return q.reshape(planes * out, k), scales.reshape(-1)


def _pack(q: torch.Tensor, scales: torch.Tensor) -> object:
    """fbgemm's packed form of the per-channel int8 weight (it keeps no other copy)."""
    with warnings.catch_warnings():  # quantized tensor creation is deprecated, still supported
        warnings.simplefilter("ignore", UserWarning)
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        qw = torch._make_per_channel_quantized_tensor(q, scales.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(qw, None)


def split_limbs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 -> (limbs [2M, K]: integer-valued float32 in [-63, 63], a [M, 1]) with
    x ~= a * (limbs[:M] + limbs[M:] / 126)."""
    a = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30) / LIMB  # [M, 1]
    r = x / a
    q1 = torch.round(r)
    q2 = torch.round((r - q1) * (2 * LIMB))
    return torch.cat([q1, q2]), a


class Int8Linear(nn.Module):
    """y = x @ W^T + bias with W = sum over `planes` of q_p * scale_p (q_p int8 [out, in],
    scale_p [out]); every row's result is independent of the rest of the batch.

    `exact`: an optional float copy of W (a tied LM head's input embedding, in memory anyway).
    Then every output that may be the row's
    maximum is recomputed from `exact` in fp32: those within 12 sigma of the approximate
    maximum, sigma being the standard deviation of an output's error when the weight and
    activation roundings are independent and uniform (|x|_2 * max(scale) and a * max_j |W_j|_2,
    over sqrt(12)). So the argmax and the values near the top are the float model's (a flip
    would need a 6-sigma rounding error); outputs far below the top keep the int8 error. When
    more than RESCORE_CAP outputs per row qualify (a flat top), the RESCORE_CAP largest do.
    """

    def __init__(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        planes: int = 1,
        exact: torch.Tensor | None = None,
        kernel: str | None = None,
    ) -> None:
        super().__init__()
        if planes not in (1, 2):
            raise ValueError(f"planes must be 1 or 2, got {planes}")
        self.planes = planes
        self.out_features, self.in_features = q.shape[0] // planes, q.shape[1]
        out_rows = self.out_features
        self.kernel = kernel or select_kernel()
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), False)
        self.exact = exact  # not a parameter of this module: shared with its owner
        if exact is not None:  # error model constants: max(scale), max_j |W_j|_2
            sq = torch.cat([c.float().square().sum(1) for c in q[:out_rows].split(8192)])
            self._scale_max = float(scales[:out_rows].max())
            self._w_l2 = float((sq.sqrt() * scales[:out_rows]).max())
        if self.kernel == "fbgemm":
            self._packed: object = _pack(q, scales.float())
            self._q: torch.Tensor | None = None
            self._scales: torch.Tensor | None = None
        else:
            self._packed, self._q, self._scales = None, q.contiguous(), scales.float()

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        planes: int = 1,
        exact: torch.Tensor | None = None,
        kernel: str | None = None,
    ) -> Int8Linear:
        """An Int8Linear approximating the float weight [out, in] (and bias [out])."""
        q, scales = quantize_planes(weight, planes)
        return cls(q, scales, bias, planes=planes, exact=exact, kernel=kernel)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kw: object) -> Int8Linear:
        """An Int8Linear approximating `linear` (keywords as `from_float`)."""
        return cls.from_float(linear.weight, linear.bias, **kw)  # type: ignore[arg-type]

    def _planes(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._q is not None and self._scales is not None:
            return self._q, self._scales
        w, _ = torch.ops.quantized.linear_unpack(self._packed)
        return w.int_repr(), w.q_per_channel_scales().float()

    @property
    def weight(self) -> torch.Tensor:
        """The first plane's int8 weight [out, in] (unpacked per access: for inspection)."""
        return self._planes()[0][: self.out_features]

    @property
    def scales(self) -> torch.Tensor:
        """The first plane's per-output-channel scales [out], float32."""
        return self._planes()[1][: self.out_features]

    def dequantized(self) -> torch.Tensor:
        """W as float32 [out, in] (sum of the planes)."""
        q, s = self._planes()
        w = (q.float() * s[:, None]).reshape(self.planes, self.out_features, self.in_features)
        return w.sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype (computed in fp32 around the int8 GEMM)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()  # [M, in]
        m, n = x2.shape[0], self.out_features
        if self.kernel == "fbgemm":
            limbs, a = split_limbs(x2)
            acc = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                limbs, 1.0, _ZERO_POINT, self._packed
            )  # [2M, planes * out] = integer sums * scale
            y = (acc[:m] + acc[m:] * (1.0 / (2 * LIMB))) * a
        else:
            assert self._q is not None and self._scales is not None
            y = torch._weight_int8pack_mm(x2, self._q, self._scales)
        if self.planes == 2:
            y = y[:, :n] + y[:, n:]  # [M, out]
        if self.exact is not None and m:
            y = self._rescore(x2, y)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*lead, n)

    def _rescore(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Recompute in fp32 every output of y [M, out] that may be its row's maximum."""
        fbgemm = self.kernel == "fbgemm"
        a = x.abs().amax(dim=1) / (LIMB * 2 * LIMB) if fbgemm else torch.zeros(len(x))
        sigma = torch.hypot(x.norm(dim=1) * self._scale_max, a * self._w_l2) / 12**0.5  # [M]
        near = y >= (y.amax(dim=1) - 12 * sigma)[:, None]  # [M, out]
        if int(near.sum()) > RESCORE_CAP * len(x):  # a flat top: the RESCORE_CAP largest
            top = y.topk(RESCORE_CAP, dim=1).indices
            near = torch.zeros_like(near).scatter_(1, top, True)
        rows, cols = near.nonzero(as_tuple=True)
        assert self.exact is not None
        exact = torch.cat(
            [
                (self.exact.detach()[c].float() * x[r]).sum(-1)
                for r, c in zip(rows.split(4096), cols.split(4096), strict=True)
            ]
        )
        return y.index_put((rows, cols), exact)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, planes={self.planes}, kernel={self.kernel}, "
            f"rescored={self.exact is not None}"
        )


# Linears whose weight one int8 plane represents well enough: the query/key and MLP input
# projections (their errors are damped by softmax and the gate). The value/output/MLP-down
# projections, which write into the residual stream, get two planes. Measured on Gemma 3 270M
# (real weights), teacher-forced top-1 agreement with fp32: one plane everywhere 95.9%, this
# split 98.6%, two planes everywhere 99.9%; the LM head (one plane, fp32 rescoring) costs 0.
ONE_PLANE = frozenset({"q_proj", "k_proj", "gate_proj", "up_proj", "c_fc", "lm_head"})


def planes_for(name: str) -> int:
    """How many int8 planes the Linear `name` (a module path) gets."""
    return 1 if name.split(".")[-1] in ONE_PLANE else 2


def quantize_linear(
    name: str, weight: torch.Tensor, bias: torch.Tensor | None, tied: torch.Tensor | None
) -> Int8Linear:
    """The Int8Linear for Linear `name` of a model, with `planes_for(name)` planes; `tied` is
    the float parameter its weight is shared with (a tied LM head's input embedding), which
    then serves the fp32 rescoring of the top outputs."""
    return Int8Linear.from_float(weight, bias, planes=planes_for(name), exact=tied)


def quantize_model(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an Int8Linear; returns the model.

    A tied LM head becomes its own int8 copy; the input embedding keeps its float weights
    (and serves the head's rescoring).
    """
    floats = {
        id(p)
        for mod in model.modules()
        if not isinstance(mod, nn.Linear)
        for p in mod.parameters(recurse=False)
    }
    targets = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    with torch.no_grad():
        for name, linear in targets:
            tied = linear.weight if id(linear.weight) in floats else None
            new = quantize_linear(name, linear.weight, linear.bias, tied)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
    return model


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast float parameters and buffers to `dtype` (int8 weights and scales stay); returns it."""
    return model.to(dtype)
