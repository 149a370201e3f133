"""Build a native model from a checkpoint directory one tensor at a time, in its final dtype.

Loading used to read the whole checkpoint into memory, copy it into a float32 model and then
quantize: three copies at the peak (20.9 GB RSS for a 10.8 GB GPT-Neo-2.7B). Here:
- the model is built with its parameters on the meta device (no memory; buffers that the
  constructor computes, such as rotary tables, stay real);
- every parameter is then read from the checkpoint on its own, straight into a tensor of the
  final dtype (fp32 weights are read in place, with no intermediate copy), or quantized to int8
  as it arrives when its module is an nn.Linear and the dtype is int8;
- safetensors files are read with plain positioned reads (the format is an 8-byte header length,
  a JSON header of dtype/shape/offsets, then raw little-endian data), not memory-mapped: pages of
  a mapping stay resident and count towards the process's RSS until the mapping is closed.
So the peak is the final model plus one tensor in flight. Tied parameters (a shared input
embedding and LM head) are read once and shared again; with int8 the LM head becomes its own
int8 copy and the embedding is kept in bf16 (half of float32; it serves the head's rescoring,
and a forward hook hands its rows to the float32 stream).
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewshot.models.quant import float_output

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_READ_CHUNK = 64 << 20  # bytes per read() call


class CheckpointReader:
    """The tensors of a checkpoint directory, read one at a time.

    Handles model.safetensors, sharded safetensors (model.safetensors.index.json), and
    pytorch_model.bin[.index.json] (loaded with mmap, so also tensor by tensor).
    """

    def __init__(self, directory: str | Path) -> None:
        d = Path(directory)
        self._entries: dict[str, tuple[Path, dict[str, Any], int]] = {}
        self._bin: dict[str, torch.Tensor] = {}
        if (d / "model.safetensors").is_file():
            self._add_safetensors(d / "model.safetensors")
        elif (d / "model.safetensors.index.json").is_file():
            for shard in _shards(d / "model.safetensors.index.json"):
                self._add_safetensors(d / shard)
        elif (d / "pytorch_model.bin.index.json").is_file():
            for shard in _shards(d / "pytorch_model.bin.index.json"):
                self._bin.update(_load_bin(d / shard))
        elif (d / "pytorch_model.bin").is_file():
            self._bin.update(_load_bin(d / "pytorch_model.bin"))
        else:
            raise FileNotFoundError(
                f"no weights in {d}: expected model.safetensors, model.safetensors.index.json, "
                "pytorch_model.bin or pytorch_model.bin.index.json"
            )

    def _add_safetensors(self, path: Path) -> None:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for key, info in header.items():
            self._entries[key] = (path, info, 8 + n)

    def keys(self) -> list[str]:
        return list(self._entries) + list(self._bin)

    def __contains__(self, key: str) -> bool:
        return key in self._entries or key in self._bin

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._bin:
            return tuple(self._bin[key].shape)
        return tuple(self._entries[key][1]["shape"])

    def dtype_of(self, aliases: list[str], key_of: Callable[[str], str]) -> torch.dtype:
        """The stored dtype of the first of `aliases` in the checkpoint."""
        key = next(key_of(a) for a in aliases if key_of(a) in self)
        if key in self._bin:
            return self._bin[key].dtype
        return _ST_DTYPES[self._entries[key][1]["dtype"]]

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `key` in `dtype` (default: as stored), in memory of its own."""
        if key in self._bin:
            t = self._bin[key]
            return t.to(dtype) if dtype is not None and t.dtype != dtype else t.clone()
        path, info, base = self._entries[key]
        stored = _ST_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        numel = math.prod(info["shape"])
        if numel * stored.itemsize != end - begin:
            raise ValueError(f"{path.name}: {key} has {end - begin} bytes for {info}")
        if dtype is None or dtype == stored:
            out = torch.empty(info["shape"], dtype=stored)
            if numel:
                _read_into(path, base + begin, _bytes_of(out.view(-1)))
            return out
        # another dtype: convert a slice at a time, never holding the stored-dtype copy whole
        out = torch.empty(info["shape"], dtype=dtype)
        flat, step = out.view(-1), max(1, _READ_CHUNK // stored.itemsize)
        staging = torch.empty(min(step, numel), dtype=stored)
        for start in range(0, numel, step):
            n = min(step, numel - start)
            _read_into(path, base + begin + start * stored.itemsize, _bytes_of(staging[:n]))
            flat[start : start + n].copy_(staging[:n])
        return out


def _shards(index: Path) -> list[str]:
    return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous 1-D tensor, writable in place."""
    return memoryview(t.view(torch.uint8).numpy())  # type: ignore[arg-type]


def _read_into(path: Path, offset: int, buf: memoryview) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(buf):
            got = os.preadv(fd, [buf[done : done + _READ_CHUNK]], offset + done)
            if got <= 0:
                raise ValueError(f"{path} ends before offset {offset + done}")
            done += got
    finally:
        os.close(fd)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While active in this thread, every nn.Parameter registered on a module lives on the meta
    device (buffers are untouched: they hold values computed by the constructors), and the
    `torch.nn.init` functions the modules' `reset_parameters` call leave meta tensors alone
    (on meta, `normal_` runs through torch's Python references, which import torch._dynamo and
    sympy: ~70 MB of RSS and a second for values nobody reads). Other threads, building their
    own modules meanwhile, are not affected."""
    _install_meta_hook()
    _ON_META.active = True
    try:
        yield
    finally:
        _ON_META.active = False


_ON_META = threading.local()
_HOOK_LOCK = threading.Lock()
_HOOKED: list[bool] = []


def _install_meta_hook() -> None:
    """Wrap nn.Module.register_parameter once per process; the wrapper passes parameters
    through unchanged except in a thread inside `parameters_on_meta`."""
    with _HOOK_LOCK:
        if _HOOKED:
            return
        original = nn.Module.register_parameter

        def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
            if getattr(_ON_META, "active", False) and param is not None:
                if param.device.type != "meta":
                    param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            original(module, name, param)

        nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, _skip_on_meta(getattr(nn.init, name)))
        _HOOKED.append(True)


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


def _skip_on_meta(init: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`init` as is, except on a meta tensor in a thread inside `parameters_on_meta`."""

    @functools.wraps(init)
    def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if getattr(_ON_META, "active", False) and tensor.device.type == "meta":
            return tensor
        return init(tensor, *args, **kwargs)

    return wrapper


def load_into(
    model: nn.Module,
    reader: CheckpointReader,
    dtype: str,
    key_of: Callable[[str], str] = lambda k: k,
    quantize: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], nn.Module]
    | None = None,
    transposed: Callable[[str], bool] = lambda name: False,
) -> nn.Module:
    """Fill `model`'s meta parameters from `reader` (checkpoint key = key_of(parameter name)).

    dtype: "fp32" or "bf16" for every float parameter; "int8" keeps float parameters in fp32
    (but a tied embedding in bf16, its module's output cast to float32) and replaces each
    nn.Linear by `quantize(weight, bias, tied)`, where `tied` is the loaded float parameter the
    Linear's weight is shared with (a tied embedding) or None.
    Raises KeyError on a missing checkpoint key and ValueError on a shape mismatch.
    """
    float_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    names: dict[int, list[str]] = {}  # id(parameter) -> every name it has (tied ones share)
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    linears = (
        {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if dtype == "int8"
        else {}
    )
    _check(model, reader, names, key_of, transposed)
    loaded: dict[int, nn.Parameter] = {}
    quantized = {id(m) for m in linears.values()}
    tied_to_linear = {id(m.weight) for m in linears.values()}
    with torch.no_grad():
        for module in model.modules():  # every parameter outside the quantized Linears
            if id(module) in quantized:
                continue
            for pname, p in list(module.named_parameters(recurse=False)):
                if p.device.type != "meta":
                    continue
                shared = id(p) in tied_to_linear  # int8: an embedding its LM head shares
                if id(p) not in loaded:
                    want = float_dtype if p.is_floating_point() else None
                    want = torch.bfloat16 if shared else want
                    t = _read(reader, names[id(p)], key_of, want, transposed=transposed)
                    loaded[id(p)] = nn.Parameter(t, requires_grad=False)
                    if t.dtype != reader.dtype_of(names[id(p)], key_of):
                        release_free_memory()  # the stored-dtype copy just freed
                setattr(module, pname, loaded[id(p)])
                if shared:
                    module.register_forward_hook(float_output)  # its rows as float32
        for mod_name, linear in linears.items():  # int8: quantize each Linear as it is read
            prefix = f"{mod_name}." if mod_name else ""
            tied = loaded.get(id(linear.weight))
            weight = (
                tied
                if tied is not None
                else _read(
                    reader, names[id(linear.weight)], key_of, torch.float32, prefix, transposed
                )
            )
            bias = None
            if linear.bias is not None:
                bias = _read(reader, names[id(linear.bias)], key_of, torch.float32, prefix)
            _set_module(model, mod_name, quantize(weight, bias, tied))  # type: ignore[misc]
            del weight, bias
            release_free_memory()
        persistent = model.state_dict(keep_vars=True)
        for name, buf in model.named_buffers():
            if name in persistent and key_of(name) in reader:  # e.g. a stored mask
                buf.copy_(reader.read(key_of(name), buf.dtype))
    return model


def _read(
    reader: CheckpointReader,
    aliases: list[str],
    key_of: Callable[[str], str],
    dtype: torch.dtype | None,
    prefer: str = "",
    transposed: Callable[[str], bool] = lambda name: False,
) -> torch.Tensor:
    """The first alias present in the checkpoint (those under `prefer` first), transposed back
    when the checkpoint stores it transposed."""
    ordered = sorted(aliases, key=lambda n: not n.startswith(prefer)) if prefer else aliases
    for name in ordered:
        if key_of(name) in reader:
            t = reader.read(key_of(name), dtype)
            return t.t().contiguous() if transposed(name) and t.dim() == 2 else t
    raise KeyError(f"checkpoint lacks {aliases[0]!r}")


def _check(
    model: nn.Module,
    reader: CheckpointReader,
    names: dict[int, list[str]],
    key_of: Callable[[str], str],
    transposed: Callable[[str], bool],
) -> None:
    """Every parameter is in the checkpoint (under one of its names) with its shape."""
    missing, bad = [], []
    for aliases in names.values():
        present = [a for a in aliases if key_of(a) in reader]
        if not present:
            missing.append(aliases[0])
            continue
        got = reader.shape(key_of(present[0]))
        want = tuple(model.get_parameter(present[0]).shape)
        if transposed(present[0]):
            want = want[::-1]
        if got != want:
            bad.append(f"{present[0]}: expected {want}, got {got}")
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise KeyError(f"state dict lacks {len(missing)} expected key(s): {shown}")
    if bad:
        raise ValueError("state dict shape mismatch: " + "; ".join(bad[:8]))


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc keeps freed temporaries otherwise,
    and the packed int8 weights allocated between them pin that memory in the RSS)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
