"""Native CPU kernels (`native.c`, `native_gemv.c`, `native_amx.c`, `native_attention.c`,
`native_runs.c`, `native_step.c`): the int8 GEMV (integer products over int16 activations) and
dequantization, RMSNorm, LayerNorm, the MLP activations, rotary positions, decode attention;
built once with the system's C compiler, loaded with ctypes. The packed int8 weight layout they
read is `packed_weight.PackedWeight`.

`load()` compiles the source into the kernel cache (`<cache>/kernels/native-<hash>.so`,
the hash covering the source and the compiler) the first time, in about a second, and returns
None where there is no C compiler or no x86 intrinsics; `quant.Int8Linear` then computes with
torch instead (correct, slow). The library links the OpenMP runtime torch already loaded, so
its parallel loops share torch's threads (each call asks for `torch.get_num_threads()`). One build
serves every x86 host: the instruction set (AMX-INT8, AVX-512 with VNNI, AVX-512, AVX2 or plain
C) is chosen at run time from the CPU (`Kernel.isa`).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from fewshot.models.packed_weight import BLOCK_ROWS, PackedWeight
from fewshot.settings import default_cache_dir

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name(name)
    for name in (
        "native.c",
        "native_gemv.c",
        "native_amx.c",
        "native_attention.c",
        "native_runs.c",
        "native_step.c",
    )
]
HEADERS = [
    Path(__file__).with_name(h)
    for h in ("native_math.h", "native_gemv.h", "native_attention_pieces.h")
]  # hashed
ISAS = {"amx": 4, "avx512vnni": 3, "avx512": 2, "avx2": 1, "c": 0}
GEMV_ROWS = {"amx": 1 << 30, "avx512vnni": 1 << 30, "avx512": 1 << 30, "avx2": 1 << 30, "c": 0}
ACTS = {"gelu_tanh": 1, "silu": 2}  # fs_act's kinds
RESCORE_MAX = 256  # most outputs per row fs_rescore recomputes (its RESCORE_MAX)
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp", "-std=c11")

_P = ctypes.c_void_p
_I = ctypes.c_int
_L = ctypes.c_long


@dataclass(frozen=True)
class Kernel:
    """The loaded library; `isa` is what this CPU runs ("amx", "avx512vnni", "avx512", "avx2"
    or "c"; "amx": AVX-512 VNNI and the AMX-INT8 tiles, which the GEMV uses from 9 rows)."""

    lib: ctypes.CDLL
    isa: str

    @property
    def gemv_rows(self) -> int:
        """Most rows the GEMV takes; more go to `gemm` (dequantize, torch's float32 GEMM).
        GPT-Neo-125M's 72 block matrices on 2 Zen 4 threads, GEMV against GEMM: AVX-512 (VNNI)
        22.4 against 69.5 ms at 64 rows, 128.5 against 353 at 341, 349 against 986 at 1,024
        (every batch: no limit); AVX2 (2 Zen 3 threads, tiles of 4 rows) 95 against 180 at
        128, 267 against 395 at 341, 397 against 552 at 512 (no limit either)."""
        return GEMV_ROWS[self.isa]

    def gemv(
        self, x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, isa: str | None = None
    ) -> torch.Tensor:
        """x [M, K] float32 contiguous -> [M, out] float32 (x @ W^T + bias); `isa` forces a
        variant (tests)."""
        m, k = x.shape
        y = torch.empty(m, w.out_features)
        self.lib.fs_gemv(
            x.data_ptr(), k, w.data.data_ptr(), w.scales.data_ptr(),
            None if bias is None else bias.data_ptr(), y.data_ptr(), w.out_features,
            m, w.out_features, k, w.group, ISAS[isa or self.isa], torch.get_num_threads(),
        )  # fmt: skip
        return y

    def dequant_t(self, w: PackedWeight, rows: tuple[int, int], out: torch.Tensor) -> torch.Tensor:
        """Weight rows [n0, n1) transposed into `out` (float32 [in, >= n1 - n0], any row
        stride); returns the filled part [in, n1 - n0]."""
        n0, n1 = rows
        assert n0 % BLOCK_ROWS == 0 and out.dtype == torch.float32 and out.stride(1) == 1
        assert out.shape[0] == w.in_features and out.shape[1] >= n1 - n0
        self.lib.fs_dequant_t(
            w.data.data_ptr(), w.scales.data_ptr(), out.data_ptr(), out.stride(0),
            n0, n1, w.in_features, w.group, ISAS[self.isa], torch.get_num_threads(),
        )  # fmt: skip
        return out[:, : n1 - n0]

    def gemm(self, x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
        """x [M, K] float32 -> [M, out] float32 through torch's float32 GEMM, the weight
        dequantized (transposed) a slice of rows at a time into a small buffer that stays in
        cache (no whole float copy, no fresh pages per call)."""
        m, k = x.shape
        step = max(BLOCK_ROWS, SLICE_VALUES // k // BLOCK_ROWS * BLOCK_ROWS)
        buf = _scratch(step * k).view(k, step)
        y = torch.empty(m, w.out_features)
        for n0 in range(0, w.out_features, step):
            n1 = min(w.out_features, n0 + step)
            torch.mm(x, self.dequant_t(w, (n0, n1), buf), out=y[:, n0:n1])
        if bias is not None:
            y += bias
        return y

    def rescore(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        exact: torch.Tensor,
        row_scale: torch.Tensor,
        bias: torch.Tensor | None,
        cap: int,
    ) -> torch.Tensor:
        """In place in y [M, N] (an int8 head's float32 output for x [M, K]): each row's outputs
        that may be its maximum, recomputed from `exact` [N, K] (float32 or bfloat16) in float32
        (native.c's fs_rescore; at most `cap` <= RESCORE_MAX per row)."""
        m, n = y.shape
        if cap > RESCORE_MAX:
            raise ValueError(f"at most {RESCORE_MAX} outputs per row are rescored, not {cap}")
        self.lib.fs_rescore(
            y.data_ptr(), x.data_ptr(), exact.data_ptr(), int(exact.dtype == torch.bfloat16),
            None if bias is None else bias.data_ptr(), row_scale.data_ptr(), m, n, x.shape[1],
            cap, ISAS[self.isa], torch.get_num_threads(),
        )  # fmt: skip
        return y

    def greedy(self, logits: torch.Tensor) -> tuple[list[int], list[float]]:
        """Each row of logits [R, V] (float32 contiguous): the first index of its maximum and
        that token's log-probability (native.c's fs_greedy)."""
        rows, vocab = logits.shape
        tok = torch.empty(rows, dtype=torch.int64)
        lp = torch.empty(rows, dtype=torch.float32)
        self.lib.fs_greedy(
            logits.data_ptr(), rows, vocab, tok.data_ptr(), lp.data_ptr(), ISAS[self.isa],
            torch.get_num_threads(),
        )  # fmt: skip
        return tok.tolist(), lp.tolist()

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        tables: torch.Tensor,
        bounds: tuple[torch.Tensor, torch.Tensor],
        scale: float,
        softcap: float | None,
    ) -> torch.Tensor:
        """One query per sequence, q [B, Hq, D] float32, against positions lo[b] .. hi[b] - 1
        of its cache (`bounds`: int32 [B] each), read in place from the pool k/v_cache
        [Hkv, NBLK, BS, D] (float32 or bfloat16) through `tables` (int64 [B, W] block ids);
        scores scale * q.k (softcap: cap * tanh(s / cap)), softmax and sum in float32.
        Returns [B, Hq, D] float32 (`native_attention.c`)."""
        b, n_heads, head_dim = q.shape
        n_kv, nblk, bs, _ = k_cache.shape
        lo, hi = bounds
        out = torch.empty(b, n_heads, head_dim)
        self.lib.fs_decode_attention(
            q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
            tables.shape[1], lo.data_ptr(), hi.data_ptr(), out.data_ptr(), b, n_heads, n_kv,
            head_dim, bs, nblk, scale, softcap or 0.0, int(k_cache.dtype == torch.bfloat16),
            ISAS[self.isa], torch.get_num_threads(),
        )  # fmt: skip
        return out

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, offset: float, eps: float
    ) -> torch.Tensor:
        """RMSNorm over the last dimension of a contiguous float32 x, times (offset + weight)."""
        y = torch.empty_like(x)
        d = x.shape[-1]
        self.lib.fs_rms_norm(
            x.data_ptr(), weight.data_ptr(), offset, eps, y.data_ptr(), x.numel() // d, d,
            torch.get_num_threads(),
        )  # fmt: skip
        return y

    def layer_norm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """LayerNorm over the last dimension of a contiguous float32 x."""
        y = torch.empty_like(x)
        d = x.shape[-1]
        self.lib.fs_layer_norm(
            x.data_ptr(), weight.data_ptr(), bias.data_ptr(), eps, y.data_ptr(), x.numel() // d,
            d, torch.get_num_threads(),
        )  # fmt: skip
        return y

    def act(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """An MLP activation (`ACTS`: "gelu_tanh" or "silu") of a contiguous float32 x."""
        y = torch.empty_like(x)
        self.lib.fs_act(
            x.data_ptr(), None, y.data_ptr(), x.numel(), ACTS[kind], torch.get_num_threads()
        )
        return y

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [N, H, D] rotated by cos/sin [N, D] (rotate_half convention), float32 contiguous:
        the bits of `x * cos + rotate_half(x) * sin`."""
        n, h, d = x.shape
        y = torch.empty_like(x)
        self.lib.fs_rope(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), y.data_ptr(), n, h, d)
        return y


SLICE_VALUES = 1 << 20  # weights dequantized per GEMM slice: 2-4 MB, about the L2 of a core
_local = threading.local()


def _scratch(numel: int) -> torch.Tensor:
    """A per-thread float32 buffer of at least `numel` values, reused across calls."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = _local.buf = torch.empty(numel)
    return buf[:numel]


def usable(*tensors: torch.Tensor) -> Kernel | None:
    """The kernel library when an elementwise kernel can take these tensors (float32,
    contiguous, on the CPU, not under torch.compile); else None."""
    for t in tensors:
        if not (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()):
            return None
    if torch.compiler.is_compiling():
        return None
    return load()


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(build_dir: Path) -> Path | None:
    """The compiled library under `build_dir` (built now if missing), or None (with a warning)
    when there is no C compiler, the build fails or the directory cannot be written."""
    cc = _compiler()
    if cc is None:
        log.warning("no C compiler found: int8 and RMSNorm run on torch's slower paths")
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
        code = b"".join(source.read_bytes() for source in SOURCES + HEADERS)
        key = hashlib.sha256(code + version.encode() + " ".join(FLAGS).encode())
        target = build_dir / f"native-{key.hexdigest()[:16]}.so"
        if target.exists():
            return target
        build_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=build_dir)
        os.close(fd)
        cmd = [cc, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:  # e.g. an assembler older than AMX: the kernels without it
            done = subprocess.run([*cmd, "-DFS_NO_AMX"], capture_output=True, text=True)
        if done.returncode != 0:
            os.unlink(tmp)
            log.warning("building the native kernels failed, using torch's slower paths:\n%s",
                        done.stderr[-2000:])  # fmt: skip
            return None
        os.replace(tmp, target)  # atomic: a concurrent build writes the same bytes
    except OSError as exc:  # an unwritable cache dir, a compiler that vanished
        log.warning("cannot build the native kernels (%s): using torch's slower paths", exc)
        return None
    log.info("built the native kernels: %s", target)
    return target


_lock = threading.Lock()
_loaded: dict[str, Kernel | None] = {}


def load(build_dir: Path | None = None, isa: str = "auto") -> Kernel | None:
    """The kernel library, built on first use (None where it cannot be built or loaded).

    `isa` ("auto", "amx", "avx512vnni", "avx512", "avx2" or "c") caps the instruction set from
    then on, for every caller: "avx2" on an AVX-512 CPU runs what an AVX2-only host runs
    (`--kernel-isa`)."""
    if isa == "auto" and "kernel" in _loaded:  # the norms ask on every call: no lock then
        return _loaded["kernel"]
    if isa not in ISAS and isa != "auto":
        raise ValueError(f"kernel isa must be auto, {', '.join(ISAS)}; got {isa!r}")
    with _lock:
        if "kernel" not in _loaded:
            path = _build(build_dir or default_cache_dir() / "kernels")
            kernel = None
            if path is not None:
                try:
                    kernel = _open(path)
                except OSError as exc:  # e.g. a cache on a noexec mount
                    log.warning("cannot load %s (%s): using torch's slower paths", path, exc)
            _loaded["kernel"] = kernel
        kernel = _loaded["kernel"]
        if kernel is not None and isa != "auto":
            cpu = {v: k for k, v in ISAS.items()}[kernel.lib.fs_isa()]
            kernel = _loaded["kernel"] = Kernel(kernel.lib, min(cpu, isa, key=ISAS.__getitem__))
        return kernel


def _open(path: Path) -> Kernel:
    lib = ctypes.CDLL(str(path))
    lib.fs_gemv.argtypes = [_P, _L, _P, _P, _P, _P, _L, _I, _I, _I, _I, _I, _I]
    lib.fs_gemv.restype = None
    lib.fs_dequant_t.argtypes = [_P, _P, _P, _L, _I, _I, _I, _I, _I, _I]
    lib.fs_dequant_t.restype = None
    lib.fs_rms_norm.argtypes = [_P, _P, ctypes.c_float, ctypes.c_float, _P, _I, _I, _I]
    lib.fs_rms_norm.restype = None
    lib.fs_layer_norm.argtypes = [_P, _P, _P, ctypes.c_float, _P, _I, _I, _I]
    lib.fs_layer_norm.restype = None
    lib.fs_act.argtypes = [_P, _P, _P, _L, _I, _I]
    lib.fs_act.restype = None
    lib.fs_rope.argtypes = [_P, _P, _P, _P, _I, _I, _I]
    lib.fs_rope.restype = None
    lib.fs_rescore.argtypes = [_P, _P, _P, _I, _P, _P, _I, _I, _I, _L, _I, _I]
    lib.fs_rescore.restype = None
    lib.fs_greedy.argtypes = [_P, _L, _L, _P, _P, _I, _I]
    lib.fs_greedy.restype = None
    lib.fs_decode_attention.argtypes = [_P, _P, _P, _P, _I, _P, _P, _P, _I, _I, _I, _I, _I, _L,
                                        ctypes.c_float, ctypes.c_float, _I, _I, _I]  # fmt: skip
    lib.fs_decode_attention.restype = None
    lib.fs_run_layers.argtypes = [_P, _P, _P, _I, _P, _P, _I, _P, _P, _P, _I, _I]
    lib.fs_run_layers.restype = _I
    lib.fs_step_phases.argtypes = [_P, _P]
    lib.fs_step_phases.restype = None
    lib.fs_isa.restype = _I
    isa = {v: k for k, v in ISAS.items()}[lib.fs_isa()]
    return Kernel(lib, isa)
