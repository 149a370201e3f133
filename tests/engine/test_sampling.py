"""Logits processing against transformers' processors, top-k ties, seeded reproducibility."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from fewshot.engine.runner import _stacked
from fewshot.engine.sampling import (
    Sampler,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    argmax,
    warp,
)
from fewshot.engine.types import SamplingParams


def _logits(seed: int, vocab: int = 500) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_top_k_keeps_exactly_k_on_ties() -> None:
    logits = torch.zeros(10)
    logits[7] = 1.0
    kept = apply_top_k(logits, 3)
    assert int(torch.isfinite(kept).sum()) == 3  # transformers' warper would keep all 10
    assert torch.isfinite(kept[7])
    assert int(torch.isfinite(TopKLogitsWarper(3)(None, logits[None])).sum()) == 10


def test_top_k_matches_transformers_without_ties() -> None:
    logits = _logits(0)
    expected = TopKLogitsWarper(20)(None, logits[None].clone())[0]
    torch.testing.assert_close(apply_top_k(logits, 20), expected)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999, 1.0])
def test_top_p_matches_transformers(top_p: float) -> None:
    logits = _logits(1)
    expected = TopPLogitsWarper(top_p)(None, logits[None].clone())[0]
    torch.testing.assert_close(apply_top_p(logits, top_p), expected)


def test_repetition_penalty_matches_transformers() -> None:
    logits = _logits(2)
    context = torch.tensor([3, 7, 7, 499, 0, 250])
    expected = RepetitionPenaltyLogitsProcessor(1.3)(context[None], logits[None].clone())[0]
    torch.testing.assert_close(apply_repetition_penalty(logits, context, 1.3), expected)


def test_warp_chain_matches_transformers() -> None:
    logits = _logits(3)
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=50, top_p=0.8)
    expected = logits[None].clone()
    for proc in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.8)):
        expected = proc(None, expected)
    torch.testing.assert_close(warp(logits, params), expected[0])


def _draws(sampler: Sampler, n: int) -> list[int]:
    return [sampler.choose(_logits(10 + i), []).token_id for i in range(n)]


def test_seeded_sampler_is_reproducible_and_seed_dependent() -> None:
    params = SamplingParams(do_sample=True, temperature=1.5, seed=1234)
    a, b = _draws(Sampler(params), 30), _draws(Sampler(params), 30)
    assert a == b
    assert a != _draws(Sampler(SamplingParams(do_sample=True, temperature=1.5, seed=99)), 30)


def test_missing_seed_is_drawn_and_reported() -> None:
    s1, s2 = Sampler(SamplingParams(do_sample=True)), Sampler(SamplingParams(do_sample=True))
    assert s1.seed is not None and s1.seed != s2.seed
    replay = Sampler(SamplingParams(do_sample=True), seed=s1.seed)
    assert _draws(s1, 10) == _draws(replay, 10)


def test_greedy_is_argmax_and_logprob_is_unwarped() -> None:
    logits = _logits(4)
    greedy = Sampler(SamplingParams()).choose(logits, [])
    assert greedy.token_id == int(logits.argmax())
    sampled = Sampler(SamplingParams(do_sample=True, temperature=0.3, top_k=5, seed=0))
    choice = sampled.choose(
        logits,
        [1, 2],
    )
    raw = torch.log_softmax(logits, -1)
    assert choice.logprob == pytest.approx(float(raw[choice.token_id]))
    assert choice.token_id in torch.topk(logits, 5).indices.tolist()


def test_top_n_alternatives_are_sorted() -> None:
    logits = _logits(5)
    choice = Sampler(SamplingParams(top_n_tokens=3)).choose(logits, [])
    raw = torch.log_softmax(logits, -1)
    assert [i for i, _ in choice.top] == torch.topk(logits, 3).indices.tolist()
    assert choice.top[0][1] == pytest.approx(float(raw.max()))


def test_greedy_with_repetition_penalty_avoids_repeats() -> None:
    logits = torch.tensor([5.0, 4.9, 0.0])
    choice = Sampler(SamplingParams(repetition_penalty=2.0)).choose(logits, [0])
    assert choice.token_id == 1


def test_argmax_is_torchs_choice_on_ties_and_nan() -> None:
    """The engine's greedy pick (through max(dim)) is torch.argmax's: the first maximum, and a
    NaN counts as the largest."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (6, 5000), generator=gen).float()  # many tied maxima per row
    x[2, 4321] = float("nan")
    x[4, 17] = float("nan")
    x[4, 3] = float("nan")
    assert torch.equal(argmax(x), torch.argmax(x, dim=-1))
    for row in x:
        assert int(argmax(row)) == int(torch.argmax(row))


def test_greedy_rows_are_read_in_place_when_they_are_one_tensors_rows() -> None:
    logits = torch.randn(5, 11)
    rows = [logits[1], logits[2], logits[3]]
    view = _stacked(rows)
    assert torch.equal(view, torch.stack(rows)) and view.data_ptr() == logits[1].data_ptr()
    apart = [logits[1], logits[3], torch.randn(11)]
    copy = _stacked(apart)
    assert torch.equal(copy, torch.stack(apart)) and copy.data_ptr() != logits[1].data_ptr()
