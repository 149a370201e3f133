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

The reordered weight is an opaque oneDNN tensor: it cannot move to another device or appear in
a state dict, so packing is the last step of loading a model for the CPU (`pack_linears`). A
head tied to the input embedding gets its own packed copy (the embedding keeps the plain rows
it looks tokens up in).
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot.models.checkpoint import release_free_memory

BATCH_HINT = 256  # rows oneDNN picks the blocked layout for; measured best across 1..341 rows


def can_pack(module: nn.Module) -> bool:
    """Whether `module` is a bf16 nn.Linear on a CPU whose oneDNN runs bf16 GEMMs."""
    return (
        type(module) is nn.Linear
        and module.weight.dtype == torch.bfloat16
        and module.weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class PackedLinear(nn.Module):
    """A bf16 nn.Linear whose weight lives in oneDNN's layout (same call: [..., in] -> [..., out])."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            # a plain attribute, not a parameter: an opaque tensor no state dict or .to() can take
            self.packed = torch.ops.mkldnn._reorder_linear_weight(
                linear.weight.detach(), BATCH_HINT
            )
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 oneDNN"


def pack_linears(model: nn.Module) -> int:
    """Swap every packable nn.Linear of `model` for a PackedLinear; returns how many.

    One at a time, handing each replaced weight's pages back to the OS, so the model's memory
    grows by one matrix at most while it is packed (and by the tied head's copy after)."""
    names = [name for name, module in model.named_modules() if can_pack(module)]
    for name in names:  # by name: no list holds the old modules (and their weights) alive
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, PackedLinear(getattr(parent, attr)))
        release_free_memory()
    return len(names)
