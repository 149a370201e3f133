"""int8 weights for CPU inference that keep fp32's quality and do not depend on the batch.

`Int8Linear` replaces an nn.Linear (same call: x [..., in] -> [..., out]). Its weight is int8
with one bfloat16 scale per group of GROUP inputs of each output row (w ~= q * scale, |q| <= 127,
symmetric; GROUP = 64, one AMX tile step): a quarter of fp32's bytes plus 3% for the scales,
which is what decoding is bound by. The weights are what is quantized: activations stay float32 between
layers, and the layer computes x @ W'^T with W' the dequantized weight (the GEMV rounds x to
int16 per group of its own, 1/256 of the weights' step; prefill multiplies in float32).

Per-group scales are what keep the quality. One scale per output row let a few large weights
set the grid of the whole row; on Gemma 3 270M (whose weights come from a 4-bit GGUF with a
scale per 32 inputs) that cost 4 points of top-1 agreement with fp32 and needed a second int8
"plane" on the matrices that write into the residual stream (9% more bytes). Groups of 64 keep
the 32's quality (98.8% against 98.7%; 128: 98.2%) and halve the scaling per product.

The products run in the native kernels of `native` (built at first use with the system's C
compiler; AMX-INT8 tiles, AVX-512 with or without VNNI, or AVX2, chosen from the CPU at run
time):
- up to `Kernel.gemv_rows` rows (every batch with AVX2 or AVX-512), a GEMV that streams
  the packed int8 weight at the memory's speed at one row and shares each widened weight load
  among a tile of rows at more: each row of x rounded to int16 per group of GROUP inputs,
  integer dot products per group (exact), scaled once per group in float32 in a fixed order, so
  a row's result is bitwise the same whatever shares the batch and whatever the instruction set
  (`native_gemv.c`; from 9 rows on AMX hosts the same sums on the tiles, `native_amx.c`);
- more rows (a CPU without AVX2), the weight is dequantized a slice at a time into a buffer that stays
  in cache and multiplied by torch's float32 GEMM (the same numbers up to rounding; a row's last
  bits can then depend on the batch, as with every float GEMM).
Without a C compiler (or off x86) the layer dequantizes with torch and calls `F.linear`: the
same numbers up to rounding, slowly.

The LM head, when tied to the input embedding, recomputes every output that could be the row's
maximum from that embedding in fp32 (those within 12 sigma of an error model), so its argmax is
the float head's. That embedding is kept in bf16 (`bf16_embedding`: half of float32's memory;
its rows enter the float32 stream).

`quantize_model(model)` swaps every nn.Linear for an Int8Linear, the LM head included (on Gemma 3
270M it is 168M of the 268M weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.models import native
from fewshot.models.native import Kernel
from fewshot.models.packed_weight import LANE, PACK_ROWS, PackedWeight, padded_in

GROUP = 64  # inputs sharing one scale (a multiple of 16; 64 is one AMX tile step)
RESCORE_CAP = 64  # most outputs per row recomputed in fp32 by a rescored head


def group_for(in_features: int, group: int = GROUP) -> int:
    """The group size used for `in_features` inputs: `group`, or all of them (rounded up to
    16) when there are fewer."""
    if group % LANE:
        raise ValueError(f"group must be a multiple of {LANE}, got {group}")
    return min(group, padded_in(in_features, LANE))


def quantize_groups(
    weight: torch.Tensor, group: int, rows: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (int8 [out, in], scales [out, groups]), symmetric per group of
    `group` inputs; the scales are float32 values exact in bfloat16. Works `rows` rows at a
    time, so the float temporaries stay small next to a large matrix."""
    out, k = weight.shape
    kp = padded_in(k, group)
    q = torch.empty(out, k, dtype=torch.int8)
    scales = torch.empty(out, kp // group, dtype=torch.float32)
    with torch.no_grad():
        for i in range(0, out, rows):
            w = weight[i : i + rows].detach().to(torch.float32)
            w = F.pad(w, (0, kp - k)).view(len(w), kp // group, group)
            # scales are stored in bfloat16: round them first, the weights then round to the
            # grid actually stored (|q| may reach 128 * 255/256: clamped, within half a step)
            s = (w.abs().amax(dim=2).clamp(min=1e-30) / 127.0).bfloat16().float()
            qi = torch.round(w / s[..., None]).clamp_(-127, 127).view(len(w), kp)[:, :k]
            q[i : i + rows] = qi
            scales[i : i + rows] = s
    return q, scales


class Int8Linear(nn.Module):
    """y = x @ W^T + bias with W = q * scale per group of inputs (q int8 [out, in], packed for
    the native kernel); see the module docstring for the kernels and what they guarantee.

    `exact`: an optional float copy of W (a tied LM head's input embedding, in memory anyway).
    Then every output that may be the row's maximum is recomputed from `exact` in fp32: those
    whose 12-sigma interval reaches the lower end of the top one's, sigma bounding the
    standard deviation of an output's error when the weight roundings are independent and
    uniform (`_rescore`). So the argmax and the values near the top are the float model's (a
    flip would need a 12-sigma rounding error); outputs far below the top keep the int8 error.
    When more than RESCORE_CAP outputs per row qualify (a flat top), the RESCORE_CAP largest do.
    """

    def __init__(
        self,
        packed: PackedWeight,
        bias: torch.Tensor | None,
        *,
        exact: torch.Tensor | None = None,
        kernel: Kernel | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = packed.out_features, packed.in_features
        self.group = packed.group
        self.kernel = kernel
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), False)
        self.exact = exact  # not a parameter of this module: shared with its owner
        # a plain attribute, not buffers: `model.to(dtype)` must leave it int8 / bfloat16
        self.packed = packed
        # per output row, its largest scale: bounds the error of that output (`_rescore`)
        self._row_scale = packed.row_scales().amax(dim=1) if exact is not None else None

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        group: int = GROUP,
        exact: torch.Tensor | None = None,
        kernel: Kernel | None | str = "auto",
    ) -> Int8Linear:
        """An Int8Linear approximating the float weight [out, in] (and bias [out]); `kernel`:
        "auto" (the native kernel where it builds), None (torch's reference path) or one."""
        g = group_for(weight.shape[1], group)
        packed = PackedWeight.empty(weight.shape[0], weight.shape[1], g)
        for i in range(0, weight.shape[0], PACK_ROWS):  # no whole-size int8 temporary
            packed.fill(i, *quantize_groups(weight[i : i + PACK_ROWS], g))
        chosen = native.load() if kernel == "auto" else kernel
        assert not isinstance(chosen, str)
        return cls(packed, bias, exact=exact, kernel=chosen)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kw: object) -> Int8Linear:
        """An Int8Linear approximating `linear` (keywords as `from_float`)."""
        return cls.from_float(linear.weight, linear.bias, **kw)  # type: ignore[arg-type]

    @property
    def packed_bytes(self) -> int:
        """The packed int8 weight's and its scales' bytes (`CausalLM.weight_bytes`)."""
        return self.packed.nbytes

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight [out, in] (unpacked per access: for inspection)."""
        return self.packed.unpack()

    @property
    def scales(self) -> torch.Tensor:
        """The scales [out, groups], float32."""
        return self.packed.row_scales()

    @property
    def nbytes(self) -> int:
        """Bytes of the int8 weight and its scales (packed, padding included)."""
        return self.packed.nbytes

    def dequantized(self) -> torch.Tensor:
        """W as float32 [out, in]."""
        s = self.scales.repeat_interleave(self.group, dim=1)[:, : self.in_features]
        return self.weight.float() * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype (computed in float32)."""
        # a decode step calls this ~75 times: only the conversions that are needed
        x2 = x.reshape(-1, self.in_features)  # [M, in]
        if x2.dtype != torch.float32 or not x2.is_contiguous():
            x2 = x2.float().contiguous()
        m, n = x2.shape[0], self.out_features
        bias: torch.Tensor | None = self.bias
        if bias is not None and bias.dtype != torch.float32:
            bias = bias.float()
        if self.kernel is None:
            y = F.linear(x2, self.dequantized(), bias)
        elif m <= self.kernel.gemv_rows:
            y = self.kernel.gemv(x2, self.packed, bias)
        else:
            y = self.kernel.gemm(x2, self.packed, bias)
        if self.exact is not None and m:
            y = self._rescore(x2, y)
        if x.dtype != torch.float32:
            y = y.to(x.dtype)
        return y.view(*x.shape[:-1], n)

    def _rescore(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Recompute in fp32 every output of y [M, out] that may be its row's maximum: output
        j's error has a standard deviation of at most sigma_j = |x|_2 * max(scale_j) / sqrt(12)
        (the weight roundings independent and uniform), so j qualifies when y_j + 12 sigma_j
        reaches the largest y_i - 12 sigma_i. (The GEMV's int16 rounding of x adds an error of
        standard deviation at most |w_j|_2 max|x| / 32767 / sqrt(12): under 11% of sigma_j at
        768 inputs even when both vectors are at their extremes, under 1% in quadrature.)"""
        assert self.exact is not None and self._row_scale is not None
        exact_w = self.exact.detach()
        if (  # the same, row by row in one native call
            self.kernel is not None
            and exact_w.dtype in (torch.float32, torch.bfloat16)
            and exact_w.is_contiguous()
            and exact_w.shape[0] >= self.out_features
            and exact_w.shape[1] == self.in_features
            and y.is_contiguous()
        ):
            bias = None if self.bias is None else self.bias.float()
            return self.kernel.rescore(y, x, exact_w, self._row_scale, bias, RESCORE_CAP)
        widths = ((x * x).sum(dim=1).sqrt() * (12 / 12**0.5)).tolist()  # 12 sigma_j / max(s_j)
        picked = [self._candidates(y[i], c) for i, c in enumerate(widths)]
        rows = torch.cat([torch.full_like(idx, i) for i, idx in enumerate(picked)])
        cols = torch.cat(picked)
        exact = torch.cat(
            [
                (exact_w[c].float() * x[r]).sum(-1)
                for r, c in zip(rows.split(4096), cols.split(4096), strict=True)
            ]
        )
        if self.bias is not None:
            exact = exact + self.bias.float()[cols]
        return y.index_put_((rows, cols), exact)  # y: this layer's own fresh output

    def _candidates(self, y: torch.Tensor, width: float) -> torch.Tensor:
        """The outputs of one row y [out] that may be its maximum (the RESCORE_CAP largest
        when more qualify: a flat top)."""
        assert self._row_scale is not None
        margin = width * self._row_scale
        idx = ((y + margin) >= (y - margin).amax()).nonzero()[:, 0]
        return y.topk(RESCORE_CAP).indices if len(idx) > RESCORE_CAP else idx

    def extra_repr(self) -> str:
        kernel = "reference" if self.kernel is None else self.kernel.isa
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group={self.group}, kernel={kernel}, "
            f"rescored={self.exact is not None}"
        )


def auto_kv_dtype(
    model: nn.Module, cpu: dict[str, bool] | None = None, kernels: bool | None = None
) -> torch.dtype:
    """The KV cache's dtype when none is chosen: the model's own (its first parameter's), but
    bfloat16 for int8 weights on a CPU with AVX512-BF16 (AMX hosts, Zen 4; `cpu`: its
    capabilities, default `torch.cpu.get_capabilities()`) or where the native kernels run
    (`kernels`, default: `native.load()` succeeds), which read bf16 keys and values on every
    instruction set. Decoding reads the whole cache every step (the native decode attention
    converts bf16 keys and values as it reads them; prefill's SDPA flash kernel scores them in
    float32): at 341 tokens of context that is 24 MB per GPT-Neo-125M step in float32, and
    bfloat16 halves it (int8 decode, Sapphire Rapids: 10.4 -> 9.8 ms/token; Zen 4, 300 -> 500
    tokens of context: 13.4 -> 12.3 ms/token in the engine; Zen 3, AVX2 only: the decode
    step's attention 1.16x faster at 350 tokens of context, 1.24x at 1,000, cold prefills as
    fast). Prompt logprobs stay close to float32 KV's (tests/engine/test_paged_engine.py).
    Without either, float32: torch's bf16 attention on an AVX2 CPU is emulated."""
    own = getattr(model, "kv_dtype", None)
    if not any(isinstance(m, Int8Linear) for m in model.modules()):
        return own if isinstance(own, torch.dtype) else torch.float32
    caps = torch.cpu.get_capabilities() if cpu is None else cpu
    bf16 = caps.get("avx512_bf16") or (caps.get("amx_bf16") and caps.get("amx_tile"))
    if not bf16:
        bf16 = native.load() is not None if kernels is None else kernels
    return torch.bfloat16 if bf16 else torch.float32  # not the bf16 tied embedding's dtype


def quantize_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, tied: torch.Tensor | None
) -> Int8Linear:
    """The Int8Linear for a model's Linear; `tied` is the float parameter its weight is shared
    with (a tied LM head's input embedding), which then serves the fp32 rescoring of the top
    outputs."""
    return Int8Linear.from_float(weight, bias, exact=tied)


def quantize_model(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an Int8Linear; returns the model.

    A tied LM head becomes its own int8 copy; the input embedding it shares keeps its weights in
    bf16 (`bf16_embedding`), which also serve the head's rescoring.
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
            tied = bf16_embedding(model, linear.weight) if id(linear.weight) in floats else None
            new = quantize_linear(linear.weight if tied is None else tied, linear.bias, tied)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
    return model


def bf16_embedding(model: nn.Module, weight: torch.Tensor) -> nn.Parameter:
    """Store the embedding that an int8 model's LM head shares in bf16: half of float32's
    memory (Gemma 3 270M: 671 -> 335 MB); the modules holding it hand their rows to the
    float32 stream (`float_output`). Returns the new parameter."""
    new = nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            continue
        for pname, p in list(module.named_parameters(recurse=False)):
            if p is weight:
                setattr(module, pname, new)
                module.register_forward_hook(float_output)
    return new


def float_output(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an int8 model's bf16 embedding: its rows enter the float32 stream."""
    del module, args
    return output.float()


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast float parameters and buffers to `dtype` (int8 weights and scales stay); returns it."""
    return model.to(dtype)
