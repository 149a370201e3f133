"""hugepages.zeros: a zeroed, writable, contiguous tensor of the asked size and dtype; large
ones start on a huge-page boundary (whether the kernel grants huge pages is its policy)."""

from __future__ import annotations

import pytest
import torch

from fewshot.models import hugepages


@pytest.mark.parametrize(
    ("numel", "dtype"), [(5, torch.int8), (3 << 20, torch.int8), ((1 << 20) + 3, torch.float32)]
)
def test_zeros_is_a_plain_zeroed_tensor(numel, dtype) -> None:
    t = hugepages.zeros(numel, dtype)
    assert t.shape == (numel,) and t.dtype == dtype and t.is_contiguous()
    assert not t.any()
    t[-1] = 7  # writable to its last element
    assert int(t[-1]) == 7 and int(t.sum()) == 7
    if numel * t.element_size() >= hugepages.HUGE:
        assert t.data_ptr() % hugepages.HUGE == 0
