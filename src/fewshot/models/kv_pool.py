"""The paged KV storage of one model: per layer a K and a V tensor of fixed-size blocks.

`KVPool.k[layer]` and `.v[layer]` are `[n_kv_heads, num_blocks, block_size, head_dim]`. Which
sequence uses which block is the engine's KV manager's business (pure Python over block ids);
this class only holds the tensors, clears blocks when they are handed out and copies a block
(copy-on-write of a shared partial block). Nothing assumes a device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
        shape = (n_kv_heads, num_blocks, block_size, head_dim)
        # allocated lazily by the OS; blocks are zeroed when handed out (`zero_blocks`)
        self.k = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.copied_bytes = 0  # K/V bytes moved between blocks (copy-on-write); tests read it

    @staticmethod
    def block_bytes(n_layers: int, n_kv_heads: int, head_dim: int, bs: int, dtype) -> int:
        """Bytes of one block over all layers, K and V."""
        return 2 * n_layers * n_kv_heads * bs * head_dim * torch.empty((), dtype=dtype).itemsize

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def _index(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(ids), dtype=torch.long, device=self.device)

    def zero_blocks(self, ids: Sequence[int]) -> None:
        """Clear newly handed-out blocks, so padding read by attention is finite."""
        if not ids:
            return
        index = self._index(ids)
        for t in self.k + self.v:
            t.index_fill_(1, index, 0)

    def copy_blocks(self, copies: Sequence[tuple[int, int, int]]) -> None:
        """Copy the first n positions of block src into block dst, in every layer, for each
        (src, dst, n): a shared partial block's copy-on-write, a partial prefix-cache hit.
        Only those positions: what follows them in src is not the new owner's."""
        for src, dst, n in copies:
            for t in self.k + self.v:
                t[:, dst, :n].copy_(t[:, src, :n])
                self.copied_bytes += t[:, dst, :n].numel() * t.element_size()
