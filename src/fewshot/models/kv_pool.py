"""The paged KV storage of one model: per layer a K and a V tensor of fixed-size blocks.

`KVPool.k[layer]` and `.v[layer]` are `[n_kv_heads, num_blocks, block_size, head_dim]`, views of
one tensor (`KVPool.kv`, K and V of every layer) so that a block is cleared or copied at once. Which
sequence uses which block is the engine's KV manager's business (pure Python over block ids);
this class only holds the tensors, clears blocks when they are handed out and copies a block
(copy-on-write of a shared partial block). `runs` maps a block table's positions to runs of
consecutive pool slots. Nothing assumes a device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def runs(table: list[int], first: int, last: int, bs: int) -> list[tuple[int, int]]:
    """Pool slot ranges [s, e) holding positions first .. last - 1 of a sequence, one per run
    of consecutive block ids in its table (usually one or two: the cached prefix and the rest)."""
    out: list[tuple[int, int]] = []
    pos = first
    while pos < last:
        j = pos // bs
        k = j
        while (k + 1) * bs < last and table[k + 1] == table[k] + 1:
            k += 1
        end = min(last, (k + 1) * bs)
        start_slot = table[j] * bs + pos % bs
        out.append((start_slot, start_slot + end - pos))
        pos = end
    return out


class KVPool:
    """Every layer's K and V blocks: `k[layer]`, `v[layer]` are [Hkv, num_blocks, bs, D]."""

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.dtype = dtype
        self.device = torch.device(device)
        # one tensor [K/V, layer, Hkv, num_blocks, bs, D], so clearing or copying a block is one
        # operation for every layer (per-layer tensors took 2 x layers operations: ~0.2 ms for
        # GPT-Neo-125M, more for deeper models, on every request); allocated lazily by the OS,
        # blocks are zeroed when handed out (`zero_blocks`)
        shape = (2, n_layers, n_kv_heads, num_blocks, block_size, head_dim)
        self.kv = torch.empty(shape, dtype=dtype, device=self.device)
        self.k = list(self.kv[0].unbind(0))  # contiguous views, one per layer
        self.v = list(self.kv[1].unbind(0))
        self.copied_bytes = 0  # K/V bytes moved between blocks (copy-on-write); tests read it

    @staticmethod
    def block_bytes(n_layers: int, n_kv_heads: int, head_dim: int, bs: int, dtype) -> int:
        """Bytes of one block over all layers, K and V."""
        return 2 * n_layers * n_kv_heads * bs * head_dim * torch.empty((), dtype=dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def zero_blocks(self, ids: Sequence[int]) -> None:
        """Clear newly handed-out blocks, so padding read by attention is finite."""
        # runs of consecutive ids: a block is one position of a "table" of the sorted ids
        for start, stop in runs(sorted(ids), 0, len(ids), 1):
            self.kv[:, :, :, start:stop].zero_()

    def copy_blocks(self, copies: Sequence[tuple[int, int, int]]) -> None:
        """Copy the first n positions of block src into block dst, in every layer, for each
        (src, dst, n): a shared partial block's copy-on-write, a partial prefix-cache hit.
        Only those positions: what follows them in src is not the new owner's."""
        for src, dst, n in copies:
            target = self.kv[:, :, :, dst, :n]
            target.copy_(self.kv[:, :, :, src, :n])
            self.copied_bytes += target.numel() * target.element_size()
