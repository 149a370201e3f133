"""Reading a GGUF file: its metadata and tensor directory, and its tensors as float32.

`GGUFFile` memory-maps the file, parses the header (key/value metadata, then one entry per
tensor with its shape, ggml type and offset) and dequantises a tensor on request with the `gguf`
package. gguf_loader.py turns that into a Hugging Face-named model directory.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch

_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
       6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}  # fmt: skip


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # torch order (rows first)
    ggml_type: int
    offset: int  # absolute, in the file
    nbytes: int


class GGUFFile:
    """Metadata and tensor table of a GGUF file; tensors are dequantised on demand.

    Parsing is done here (memory-mapped, struct-based) because the `gguf` package's reader builds
    an object per string and takes a minute on a 262k-entry vocabulary; dequantisation uses
    `gguf.quants.dequantize`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        if mm[:4] != b"GGUF":
            raise ValueError(f"{self.path} is not a GGUF file (bad magic)")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version not in (2, 3):
            raise ValueError(f"{self.path}: unsupported GGUF version {version}")
        pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (vtype,) = struct.unpack_from("<I", mm, pos)
            self.metadata[key], pos = self._value(pos + 4, vtype)
        raw = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (ndim,) = struct.unpack_from("<I", mm, pos)
            dims = struct.unpack_from(f"<{ndim}Q", mm, pos + 4)
            gtype, off = struct.unpack_from("<IQ", mm, pos + 4 + 8 * ndim)
            pos += 4 + 8 * ndim + 12
            raw.append((name, tuple(reversed(dims)), gtype, off))
        align = int(self.metadata.get("general.alignment", 32))
        data_start = (pos + align - 1) // align * align
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.tensors: dict[str, TensorEntry] = {}
        for name, shape, gtype, off in raw:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(gtype)]
            nbytes = prod(shape) // block * type_size
            self.tensors[name] = TensorEntry(name, shape, gtype, data_start + off, nbytes)

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._mm, pos)
        return self._mm[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace"), pos + 8 + n

    def _value(self, pos: int, vtype: int) -> tuple[Any, int]:
        if vtype in _SCALAR:
            (v,) = struct.unpack_from(_SCALAR[vtype], self._mm, pos)
            if vtype == 6:  # shortest decimal of the float32 (1e-06, not 9.99999997e-07)
                v = float(str(np.float32(v)))
            return v, pos + struct.calcsize(_SCALAR[vtype])
        if vtype == 8:
            return self._string(pos)
        if vtype == 9:
            etype, count = struct.unpack_from("<IQ", self._mm, pos)
            pos += 12
            if etype in _NP:
                arr: np.ndarray = np.frombuffer(self._mm, dtype=_NP[etype], count=count, offset=pos)
                return arr.tolist(), pos + arr.nbytes
            out = []
            for _ in range(count):
                v, pos = self._value(pos, etype)
                out.append(v)
            return out, pos
        raise ValueError(f"{self.path}: unknown GGUF metadata type {vtype}")

    @property
    def arch(self) -> str:
        return str(self.metadata["general.architecture"])

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{key}", default)

    def tensor(self, name: str) -> torch.Tensor:
        """Dequantise tensor `name` to a float32 torch tensor of its HF shape."""
        e = self.tensors[name]
        return self.rows(name, 0, _rows(e)).reshape(e.shape)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of tensor `name` seen as 2-D ([rows, last dim]), as float32.

        Lets a caller dequantise a large tensor (a 262k-token embedding) a slice at a time.
        """
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize

        e = self.tensors[name]
        row_bytes = e.nbytes // _rows(e)
        raw = np.frombuffer(
            self._mm, dtype=np.uint8, count=(stop - start) * row_bytes,
            offset=e.offset + start * row_bytes,
        )  # fmt: skip
        arr = dequantize(raw.reshape(stop - start, row_bytes), GGMLQuantizationType(e.ggml_type))
        return torch.from_numpy(np.array(arr, dtype=np.float32).reshape(stop - start, -1))

    def close(self) -> None:
        self._mm.close()


def _rows(e: TensorEntry) -> int:
    """Rows of a tensor seen as 2-D: every dimension but the last (a vector is one row)."""
    return prod(e.shape[:-1]) if len(e.shape) > 1 else 1
