"""A step's decoder layers in one native call (`native_step.c`), for int8 models on the CPU.

From Python a decode step is ~20 operations per layer, each a module call, a dispatch and an
allocation: on GPT-Neo-125M ~3 ms a step, as much as reading the int8 weights. A family that
describes its layers (`CausalLM.decode_layers`: which norms, projections, rotary table, window
and scale each layer has) gets them run by `fs_run_layers` instead, on the kernels its eager
code calls for float32 CPU tensors, in the same order: the hidden states are bitwise the eager
path's (tests/models/test_native_step.py), so the engine's exactness tests hold on both paths.

Every operation of a layer works row by row, attention included where each query attends on
its own in the native kernel (decodes and prefill chunks of up to
`attention_metadata.NATIVE_PREFILL_TOKENS` tokens: a few-shot query after its cached prefix), so
such a batch, mixed or not, runs here as a whole. `FusedLayers.build` says None where the layers
cannot run natively (a weight that is not the native kernel's int8, a norm or activation it
lacks, no C compiler); `takes` says whether a batch can (its queries attended natively, its
rows within the GEMV's, the pool on the CPU in float32 or bfloat16; `CausalLM.fused_layers`
keeps it out of torch.compile's traces).
Embeddings, the final norm and the LM head (whose top outputs are rescored in fp32) stay in
Python: one call each.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewshot.models import hugepages, native
from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.checkpoint import release_free_memory
from fewshot.models.kv_pool import KVPool
from fewshot.models.layers import NATIVE_ACTS, GemmaRMSNorm, LayerNorm, RMSNorm
from fewshot.models.packed_weight import BLOCK_ROWS, PackedWeight
from fewshot.models.quant import Int8Linear

_P, _I, _F, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long


class _Lin(ctypes.Structure):  # fs_lin
    _fields_ = [("q", _P), ("s", _P), ("bias", _P), ("N", _I), ("K", _I), ("G", _I)]


class _Nrm(ctypes.Structure):  # fs_nrm
    _fields_ = [("w", _P), ("b", _P), ("offset", _F), ("eps", _F), ("kind", _I)]


_NORMS = ("in_norm", "post_attn", "pre_ff", "post_ff", "q_norm", "k_norm")
_LINEARS = ("q", "k", "v", "o", "w1", "w3", "w2")


class _Layer(ctypes.Structure):  # fs_layer
    _fields_ = [
        *((n, _Nrm) for n in _NORMS),
        *((n, _Lin) for n in _LINEARS),
        ("rope", _I), ("window", _I), ("scale", _F), ("softcap", _F), ("qkv", _I), ("gate_up", _I),
    ]  # fmt: skip


class _Stack(ctypes.Structure):  # fs_stack
    _fields_ = [
        ("n_layers", _I), ("C", _I), ("Hq", _I), ("Hkv", _I), ("D", _I), ("inner", _I),
        ("act", _I), ("layers", ctypes.POINTER(_Layer)),
    ]  # fmt: skip


class _Pool(ctypes.Structure):  # fs_pool
    _fields_ = [("k", ctypes.POINTER(_P)), ("v", ctypes.POINTER(_P)), ("bf16", _I), ("bs", _I),
                ("nblk", _L)]  # fmt: skip


# the parts of a layer fs_run_layers times, in its order (native_step.c's PH_* enum)
STEP_PHASES = (
    "norms and residuals",
    "q/k/v projection",
    "rotary and KV write",
    "attention",
    "output projection",
    "MLP up (and gate) projection",
    "activation",
    "MLP down projection",
)


@dataclass(frozen=True)
class StepPhases:
    """Where `fs_run_layers` calls spent their time since the last read (`step_phases`)."""

    seconds: dict[str, float]  # per part of a layer (STEP_PHASES), summed over layers and calls
    calls: int
    rows: int

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def step_phases(kernel: native.Kernel) -> StepPhases:
    """Time in each part of the native layers, over every call in this process since the last
    read (all threads); resets the totals."""
    ns = (ctypes.c_double * len(STEP_PHASES))()
    counts = (ctypes.c_long * 2)()
    kernel.lib.fs_step_phases(ns, counts)
    return StepPhases(
        {name: ns[i] / 1e9 for i, name in enumerate(STEP_PHASES)}, counts[0], counts[1]
    )


@dataclass
class DecodeLayer:
    """One pre-norm decoder layer as a family describes it (module docstring of native_step.c):
    its modules (None where it has no such part), rotary table (-1: none), window and scale."""

    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    w1: nn.Module  # the activated projection (c_fc, gate_proj)
    w2: nn.Module  # the MLP's output (c_proj, down_proj)
    in_norm: nn.Module | None
    pre_ff: nn.Module | None
    w3: nn.Module | None = None  # multiplied into act(w1) (up_proj)
    post_attn: nn.Module | None = None
    post_ff: nn.Module | None = None
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None
    rope: int = -1
    window: int | None = None
    scale: float = 1.0
    softcap: float | None = None


@dataclass
class DecodeLayers:
    """A family's decoder layers with their shared sizes and MLP activation."""

    layers: list[DecodeLayer]
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    inner: int
    act: object  # the activation function (layers.activation)


def gated_layer(attn: Any, mlp: Any, **parts: Any) -> DecodeLayer:
    """A layer whose attention has q/k/v/o_proj and whose MLP is act(gate_proj) * up_proj ->
    down_proj (Llama, Gemma 3); `parts`: its norms, rotary table, window, scale."""
    return DecodeLayer(
        q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, o=attn.o_proj,
        w1=mlp.gate_proj, w3=mlp.up_proj, w2=mlp.down_proj, **parts,
    )  # fmt: skip


def describe(layers: list[DecodeLayer], attn: Any, act: object, hidden: int) -> DecodeLayers:
    """`layers` with the sizes of the first layer's attention module (`n_heads`, `head_dim`,
    `n_kv` where it has grouped queries) and the MLP's activation."""
    heads = int(attn.n_heads)
    return DecodeLayers(
        layers=layers,
        n_heads=heads,
        n_kv_heads=int(getattr(attn, "n_kv", heads)),
        head_dim=int(attn.head_dim),
        hidden=hidden,
        inner=int(layers[0].w1.out_features),  # type: ignore[arg-type]
        act=act,
    )


def _lin(module: nn.Module | None) -> _Lin | None:
    if module is None:
        return _Lin()
    if not (isinstance(module, Int8Linear) and module.kernel is not None):
        return None
    if module.exact is not None or (module.bias is not None and module.bias.dtype != torch.float32):
        return None
    w = module.packed
    bias = None if module.bias is None else module.bias.data_ptr()
    return _Lin(w.data.data_ptr(), w.scales.data_ptr(), bias, w.out_features, w.in_features,
                w.group)  # fmt: skip


def _joint(modules: list[nn.Module | None]) -> tuple[_Lin, list[torch.Tensor]] | None:
    """One GEMV for projections of the same input (q, k and v; gate and up): their packed
    weights stored one after the other, each module's own weight now a view of that storage
    (no second copy: the caller hands the freed pages back; a view joined before is reused in
    place). Returns the joint weight and the tensors it points to; None when they cannot be
    joined (one not the native int8, a width not in whole blocks of 16, different inputs or
    groups). One call instead of three: GPT-Neo-125M one row per pass of its block weights 2.09
    -> 1.89 ms, Gemma 3 270M (small k, v) 3.41 -> 2.84 ms (2 threads, AMX host)."""
    mods = [m for m in modules if isinstance(m, Int8Linear) and _lin(m) is not None]
    ps = [m.packed for m in mods]
    if len(mods) != len(modules) or len({(p.in_features, p.group) for p in ps}) != 1:
        return None
    if any(p.out_features % BLOCK_ROWS for p in ps):
        return None
    data, scales = _stored_together(ps) or (
        _concat([p.data for p in ps]),
        torch.cat([p.scales for p in ps]),
    )
    at = block = 0
    for m, p in zip(mods, ps, strict=True):
        n, blocks = p.data.numel(), p.scales.shape[0]
        m.packed = PackedWeight(
            data[at : at + n], scales[block : block + blocks], p.out_features, p.in_features,
            p.group,
        )  # fmt: skip
        at, block = at + n, block + blocks
    held = [data, scales]
    bias: torch.Tensor | None = None
    if any(m.bias is not None for m in mods):
        bias = torch.cat([torch.zeros(m.out_features) if m.bias is None else m.bias for m in mods])
        held.append(bias)
    width = sum(p.out_features for p in ps)
    bias_ptr = None if bias is None else bias.data_ptr()
    lin = _Lin(data.data_ptr(), scales.data_ptr(), bias_ptr, width, ps[0].in_features, ps[0].group)
    return lin, held


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    """1-D tensors one after the other in new storage on huge pages (`hugepages`)."""
    out = hugepages.zeros(sum(p.numel() for p in parts), parts[0].dtype)
    return torch.cat(parts, out=out)


def _stored_together(ps: list[PackedWeight]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The storage that `_joint` made for these weights, when they are its views in order."""
    data, scales = ps[0].data._base, ps[0].scales._base
    if data is None or scales is None:
        return None
    at = block = 0
    for p in ps:
        if p.data._base is not data or p.scales._base is not scales:
            return None
        if p.data.data_ptr() != data.data_ptr() + at:
            return None
        if p.scales.data_ptr() != scales[block:].data_ptr():
            return None
        at, block = at + p.data.numel(), block + p.scales.shape[0]
    return (data, scales) if at == data.numel() and block == scales.shape[0] else None


def _norm(module: nn.Module | None) -> _Nrm | None:
    if module is None:
        return _Nrm()
    weight = getattr(module, "weight", None)
    if weight is None or weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    if type(module) is LayerNorm and module.bias is not None:
        if module.bias.dtype != torch.float32:
            return None
        return _Nrm(weight.data_ptr(), module.bias.data_ptr(), 0.0, module.eps, 1)
    if type(module) in (RMSNorm, GemmaRMSNorm):
        offset = 1.0 if type(module) is GemmaRMSNorm else 0.0
        return _Nrm(weight.data_ptr(), None, offset, module.eps, 2)
    return None


def _shapes_fit(d: DecodeLayer, desc: DecodeLayers) -> bool:
    """Whether the layer's weights and norms have the sizes the C code assumes (it writes by
    them: a mismatch would be out of bounds, so such a model stays on the eager path)."""
    q_width, kv_width = desc.n_heads * desc.head_dim, desc.n_kv_heads * desc.head_dim
    want = {
        "q": (q_width, desc.hidden), "k": (kv_width, desc.hidden), "v": (kv_width, desc.hidden),
        "o": (desc.hidden, q_width), "w1": (desc.inner, desc.hidden),
        "w3": (desc.inner, desc.hidden), "w2": (desc.hidden, desc.inner),
    }  # fmt: skip
    for name, (out, inp) in want.items():
        m = getattr(d, name)
        if m is not None and (m.out_features, m.in_features) != (out, inp):
            return False
    norms = {"in_norm": desc.hidden, "post_attn": desc.hidden, "pre_ff": desc.hidden,
             "post_ff": desc.hidden, "q_norm": desc.head_dim, "k_norm": desc.head_dim}  # fmt: skip
    return desc.n_heads % desc.n_kv_heads == 0 and all(
        getattr(d, n) is None or getattr(d, n).weight.numel() == size for n, size in norms.items()
    )


class FusedLayers:
    """The native step over one model's decoder layers (see the module docstring)."""

    def __init__(
        self,
        kernel: native.Kernel,
        desc: DecodeLayers,
        layers: list[_Layer],
        held: list[torch.Tensor] | None = None,
    ) -> None:
        self.kernel = kernel
        self.held = held or []  # the joint weights' tensors the layers point to
        self.layers = (_Layer * len(layers))(*layers)
        self.stack = _Stack(
            len(layers), desc.hidden, desc.n_heads, desc.n_kv_heads, desc.head_dim, desc.inner,
            native.ACTS[NATIVE_ACTS[desc.act]], self.layers,  # type: ignore[index]
        )  # fmt: skip

    @classmethod
    def build(cls, desc: DecodeLayers | None) -> FusedLayers | None:
        """The step for these layers, or None where it cannot run natively. The projections of
        one input are joined (`_joint`): their modules' packed weights become views."""
        kernel = native.load()
        if kernel is None or desc is None or desc.act not in NATIVE_ACTS:
            return None
        layers, held = [], []
        for d in desc.layers:
            if not _shapes_fit(d, desc):
                return None
            qkv = _joint([d.q, d.k, d.v])  # (first: the modules' weights become views)
            gate_up = _joint([d.w1, d.w3]) if d.w3 is not None else None
            if qkv is not None or gate_up is not None:
                release_free_memory()  # layer by layer: the separate copies leave the RSS
            lins = [_lin(getattr(d, n)) for n in _LINEARS]
            norms = [_norm(getattr(d, n)) for n in _NORMS]
            if any(x is None for x in (*lins, *norms)):
                return None
            layer = _Layer(*norms, *lins)
            layer.rope, layer.window = d.rope, d.window or 0
            layer.scale, layer.softcap = d.scale, d.softcap or 0.0
            for joint, name, flag in ((qkv, "q", "qkv"), (gate_up, "w1", "gate_up")):
                if joint is not None:
                    setattr(layer, name, joint[0])
                    setattr(layer, flag, 1)
                    held += joint[1]
            layers.append(layer)
        return cls(kernel, desc, layers, held)

    def takes(self, x: torch.Tensor, attn: AttentionMetadata) -> bool:
        """Whether this batch's layers run natively (module docstring)."""
        pool = attn.pool
        return (
            attn.attends_natively
            and x.shape[0] <= self.kernel.gemv_rows  # the eager Int8Linear's GEMV, not its GEMM
            and pool is not None
            and pool.device.type == "cpu"
            and pool.dtype in (torch.float32, torch.bfloat16)
            and x.dtype == torch.float32
            and x.device.type == "cpu"
        )

    @staticmethod
    def _pool(pool: KVPool) -> _Pool:
        """The pool's tensors for one call (built per call: nothing shared between engines)."""
        n = len(pool.k)
        k = (_P * n)(*(t.data_ptr() for t in pool.k))
        v = (_P * n)(*(t.data_ptr() for t in pool.v))
        bf16 = int(pool.dtype == torch.bfloat16)
        return _Pool(k, v, bf16, pool.block_size, pool.num_blocks)

    def run(
        self,
        x: torch.Tensor,
        attn: AttentionMetadata,
        ropes: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """x [N, C] (the embedded new tokens) through every layer: [N, C]; writes the new K/V.
        `ropes`: (cos, sin) [N, D] per rotary table the layers name."""
        assert attn.pool is not None
        pool = self._pool(attn.pool)
        x = x.clone(memory_format=torch.contiguous_format)  # written in place
        tables, hi = attn.native_rows()
        tables = tables.contiguous()
        tabs = [(c.float().contiguous(), s.float().contiguous()) for c, s in ropes]  # held
        cos = (_P * 2)(*[c.data_ptr() for c, _ in tabs])
        sin = (_P * 2)(*[s.data_ptr() for _, s in tabs])
        status = self.kernel.lib.fs_run_layers(
            ctypes.byref(self.stack), ctypes.byref(pool), x.data_ptr(), x.shape[0], attn.slot_mapping.data_ptr(),
            tables.data_ptr(), tables.shape[1], hi.data_ptr(), cos, sin,
            native.ISAS[self.kernel.isa], torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("the native layers ran out of memory")
        return x
