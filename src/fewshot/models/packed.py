"""bf16 linear layers with their weights reordered once for oneDNN (CPU).

`F.linear` on bf16 CPU tensors runs a oneDNN GEMM (on the AMX tiles where the CPU has them), but
it reorders the weight into oneDNN's blocked layout on every call: at decode sizes, where the
weight read is the whole cost, that pass over the weight is paid again each step. `PackedLinear`
holds the weight already reordered (what Inductor's weight prepacking does for a frozen graph)
and calls the same oneDNN kernel on it. Results are bitwise those of `F.linear` (same kernel,
same accumulation order), so batch independence and every bf16 test carry over.

Measured on a Sapphire Rapids host (2 threads, GPT-Neo-125M's 72 block matrices, bf16): 13.2 ->
9.1 ms at 1 row, 15.8 -> 11.2 ms at 26 rows, 41.4 -> 32.6 ms at 341 rows; the 768 x 50257 LM head
3.75 -> 1.89 ms at 1 row and 5.07 -> 1.91 ms at 8.

The activation that follows an MLP's first projection (gelu, tanh-gelu, silu, relu) runs as a
oneDNN post-op on the fp32 accumulator, before the output is rounded to bf16: a family names
that projection in its MLP's `activated` attribute, and `pack_linears` fuses it and makes the
MLP's `act` the identity. bf16 `F.gelu` on the CPU is slow: GPT-Neo-125M's 12 `c_fc` + gelu took
7.5 ms at 26 rows and 78.7 ms at 341 rows, fused 2.4 and 20.2 ms (the fused results are as
close to fp32 as the unfused ones). Fused layers are no longer bitwise `F.linear` + act.

oneDNN builds (JIT-compiles) a kernel for every new number of rows and keeps it in its kernel
cache: 7 ms and 0.7-2.8 MB for each (GPT-Neo-125M's 3072 x 768, against 0.7 ms for the GEMM),
so every prompt of a new length paid ~30 ms of compiling and the cache grew by ~5 MB, up to
its 1,024 kernels. `PackedLinear` runs more than 32 rows padded to a bucket (multiples of 8 up
to 128 rows, of 16 up to 256, of 32 up to 512, and so on: at most 1/8 more rows from 64 up): 52
kernels per matrix shape up to 4,096 rows, each built once. Up to 32 rows (decode batches,
short suffixes) run as they are.

The reordered weight is an opaque oneDNN tensor: it cannot move to another device or appear in
a state dict, so packing is the last step of loading a model for the CPU (`pack_linears`).

A head tied to the input embedding is not packed: the embedding needs the plain rows to look
tokens up in, and a packed copy would hold the largest matrix twice (+77 MB on GPT-Neo-125M,
+335 MB on Gemma 3 270M). `TiedHead` multiplies the other way round, logits^T = W @ x^T, which
makes the plain weight oneDNN's source operand (read in place, never reordered) and the few
activation rows its weights: about as fast as the packed copy (GPT-Neo's 50,257 x 768 head, 2
threads, float32 logits out: 1.78 / 2.04 ms at 1 / 8 rows, packed 1.65 / 1.80, `F.linear` 2.6 /
3.2; Gemma's 262,144 x 640 head 13.1 / 13.5 ms, packed 13.4 / 13.4, `F.linear` 19.5 / 22.0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.models.checkpoint import release_free_memory
from fewshot.models.layers import activation

BATCH_HINT = 256  # rows oneDNN picks the blocked layout for; measured best across 1..341 rows
EXACT_ROWS = 32  # up to this many rows run unpadded (decode batches); more are padded to a bucket
# our activation functions -> oneDNN's post-op (name, algorithm) in `mkldnn._linear_pointwise`
POST_OPS = {
    activation("gelu_new"): ("gelu", "tanh"),
    activation("gelu"): ("gelu", "none"),
    activation("silu"): ("swish", ""),
    activation("relu"): ("relu", ""),
}


def can_pack(module: nn.Module) -> bool:
    """Whether `module` is a bf16 nn.Linear on a CPU whose oneDNN runs bf16 GEMMs."""
    return (
        type(module) is nn.Linear
        and module.weight.dtype == torch.bfloat16
        and module.weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def bucket_rows(m: int) -> int:
    """Rows a GEMM of `m` rows runs with: `m` up to EXACT_ROWS, else `m` rounded up to a multiple
    of 1/16 of the next power of two, at least 8 (33 -> 40, 341 -> 352, 1500 -> 1536)."""
    if m <= EXACT_ROWS:
        return m
    step = max(8, (1 << (m - 1).bit_length()) // 16)
    return -(-m // step) * step


def _to_bucket(rows: torch.Tensor) -> torch.Tensor:
    """rows [m, in], followed by zero rows up to `bucket_rows(m)`."""
    m = rows.shape[0]
    padded = bucket_rows(m)
    return rows if padded == m else F.pad(rows, (0, 0, 0, padded - m))


class PackedLinear(nn.Module):
    """A bf16 nn.Linear whose weight lives in oneDNN's layout (same call: [..., in] -> [..., out])."""

    def __init__(self, linear: nn.Linear, post_op: tuple[str, str] = ("none", "")) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.post_op, self.algorithm = post_op
        with torch.no_grad():
            # a plain attribute, not a parameter: an opaque tensor no state dict or .to() can take
            self.packed = torch.ops.mkldnn._reorder_linear_weight(
                linear.weight.detach(), BATCH_HINT
            )
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    @property
    def packed_bytes(self) -> int:
        """The reordered bf16 weight's bytes (the opaque tensor does not say)."""
        return 2 * self.in_features * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(
            _to_bucket(rows), self.packed, self.bias, self.post_op, [], self.algorithm
        )
        return out[: rows.shape[0]].view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        fused = "" if self.post_op == "none" else f", then {self.post_op} {self.algorithm}".rstrip()
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16{fused}"


class TiedHead(nn.Module):
    """A bf16 nn.Linear whose weight is shared with another module (a tied LM head): computes
    x @ W^T as (W @ x^T)^T on the shared weight, without a copy (see the module docstring), and
    returns float32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight  # the same Parameter the embedding holds
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in] bf16 -> [..., out] float32 (the logits' dtype: the transposition back from
        W @ x^T and the conversion then cost one pass instead of two)."""
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] == 1:
            out = torch.mv(self.weight, rows[0])[None].float()
        else:  # padded as PackedLinear's rows: oneDNN builds a kernel per row count
            out = torch.mm(self.weight, _to_bucket(rows).t()).t()[: rows.shape[0]]
            out = out.to(torch.float32, memory_format=torch.contiguous_format)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16, tied"


def pack_linears(model: nn.Module) -> int:
    """Swap every packable nn.Linear of `model` for a PackedLinear, fusing an MLP's activation
    into the projection its `activated` attribute names, or for a TiedHead where its weight is
    shared with another module; returns how many Linears were swapped.

    One at a time, handing each replaced weight's pages back to the OS, so the model's memory
    grows by one matrix at most while it is packed."""
    names = [name for name, module in model.named_modules() if can_pack(module)]
    shared = _shared_weights(model)
    for name in names:  # by name: no list holds the old modules (and their weights) alive
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        if id(linear.weight) in shared:
            setattr(parent, attr, TiedHead(linear))
            continue
        post_op = _post_op(parent, attr)
        setattr(parent, attr, PackedLinear(linear, post_op or ("none", "")))
        if post_op is not None:
            parent.act = nn.Identity()
        del linear
        release_free_memory()
    return len(names)


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of the parameters that more than one module holds (a tied head and its embedding)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _post_op(module: nn.Module, attr: str) -> tuple[str, str] | None:
    """The post-op for Linear `attr` of `module`: its activation when `attr` is the projection
    the MLP's `act` follows and oneDNN has that activation, else None."""
    if getattr(type(module), "activated", None) != attr:
        return None
    act = getattr(module, "act", None)
    return POST_OPS.get(act) if callable(act) else None
