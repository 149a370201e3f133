"""The packed int8 weight layout the native kernels read (`native_gemv.c`, `native_amx.c`):
`PackedWeight`, an int8 weight with a bfloat16 scale per group of inputs of a row, rows in
blocks of 16 and each pair of inputs of a block's 16 rows side by side, so that one 32-byte load
is a 16-lane pair dot product's operand. Packing goes a slice of rows at a time (no second
full-size copy); the data lives on 2 MiB pages where the system allows (`hugepages`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewshot.models import hugepages

BLOCK_ROWS = 16  # output rows per packed block (NB in native_gemv.c)
LANE = 16  # a group's inputs are a multiple of this
PACK_ROWS = 4096  # rows packed per slice (a multiple of BLOCK_ROWS)


def padded_in(count: int, step: int) -> int:
    """`count` rounded up to a multiple of `step` (a packed row's inputs to its group size, the
    rows to whole blocks)."""
    return -(-count // step) * step


@dataclass(frozen=True)
class PackedWeight:
    """An int8 weight [out, in] with a bfloat16 scale per `group` inputs of a row, in the layout
    the kernels read (`native_gemv.c`): rows in blocks of 16, and in a block each pair of inputs
    of the 16 rows side by side, `data` int8 [N16/16, KP/2, 16, 2] flat (N16 = out rounded up
    to 16, KP = in rounded up to the group; zero padded); `scales` bfloat16 [N16/16, KP/group,
    16] (the 16 rows' scales of a group side by side; zero padded)."""

    data: torch.Tensor
    scales: torch.Tensor
    out_features: int
    in_features: int
    group: int

    @classmethod
    def empty(cls, out_features: int, in_features: int, group: int) -> PackedWeight:
        """An all-zero packed weight [out, in] (padding included), to `fill`."""
        n16, kp = padded_in(out_features, BLOCK_ROWS), padded_in(in_features, group)
        data = hugepages.zeros(n16 * kp, torch.int8)  # streamed once per step: 2 MiB pages
        scales = torch.zeros(n16 // BLOCK_ROWS, kp // group, BLOCK_ROWS, dtype=torch.bfloat16)
        return cls(data, scales, out_features, in_features, group)

    def fill(self, row: int, q: torch.Tensor, scales: torch.Tensor) -> None:
        """Rows row .. row + len(q) - 1 (`row` a multiple of 16) from int8 q [r, in] and their
        scales [r, groups] (values exact in bfloat16)."""
        assert row % BLOCK_ROWS == 0
        r, k = q.shape
        kp = padded_in(self.in_features, self.group)
        r16 = padded_in(r, BLOCK_ROWS)
        chunk = torch.zeros(r16, kp, dtype=torch.int8)
        chunk[:r, :k] = q
        blocks = chunk.view(-1, BLOCK_ROWS, kp // 2, 2).transpose(1, 2)  # [b, kp/2, 16, 2]
        b0 = row // BLOCK_ROWS
        self.data.view(-1, kp // 2, BLOCK_ROWS, 2)[b0 : b0 + len(blocks)] = blocks
        s = torch.zeros(r16, kp // self.group, dtype=torch.bfloat16)
        s[:r] = scales
        self.scales[b0 : b0 + len(blocks)] = s.view(-1, BLOCK_ROWS, kp // self.group).transpose(
            1, 2
        )

    @classmethod
    def pack(cls, q: torch.Tensor, scales: torch.Tensor, group: int) -> PackedWeight:
        """From int8 q [N, K] and scales [N, groups] (values exact in bfloat16), a slice at a
        time (no second full-size copy)."""
        packed = cls.empty(q.shape[0], q.shape[1], group)
        for i in range(0, q.shape[0], PACK_ROWS):
            packed.fill(i, q[i : i + PACK_ROWS], scales[i : i + PACK_ROWS])
        return packed

    def unpack(self) -> torch.Tensor:
        """The int8 weight [out, in]."""
        kp = padded_in(self.in_features, self.group)
        blocks = self.data.view(-1, kp // 2, BLOCK_ROWS, 2).transpose(1, 2)
        return blocks.reshape(-1, kp)[: self.out_features, : self.in_features]

    def row_scales(self) -> torch.Tensor:
        """The scales [out, groups], float32."""
        s = self.scales.transpose(1, 2).reshape(-1, self.scales.shape[1])
        return s[: self.out_features].float()

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weight and its scales, padding included."""
        return self.data.numel() + self.scales.numel() * 2
