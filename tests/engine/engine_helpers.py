"""Helpers shared by the engine tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import torch

GPT2_VOCAB = 50257


def random_ids(n: int, seed: int, vocab: int = GPT2_VOCAB - 1) -> list[int]:
    """n random token ids (never EOS, which is the last id)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=gen).tolist()
