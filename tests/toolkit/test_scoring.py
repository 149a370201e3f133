"""Answer normalisation, exact match, rank choice and aggregates."""

from __future__ import annotations

import pytest

from fewshot.toolkit.scoring import accuracy, exact_match, mean_std, normalize, rank_choice, softmax


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("  Paris ", "paris"),
        ("Paris.", "paris"),
        ('"loutre  de\tmer"', "loutre de mer"),
        ("« été »", "été"),
        ("ＡＢＣ", "abc"),  # NFKC folds full-width letters
        ("New  Delhi!", "new delhi"),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    assert normalize(raw) == norm


def test_exact_match_uses_normalisation_and_accepted_answers() -> None:
    assert exact_match(" Chat.", "chat")
    assert exact_match("clef", ["clé", "clef"])
    assert not exact_match("ete", "été")  # accents matter
    assert not exact_match("chat noir", "chat")
    assert not exact_match("", "chat")


def test_rank_choice_and_ties() -> None:
    assert rank_choice([-3.0, -1.0, -2.0], ["a", "b", "c"]) == "b"
    assert rank_choice([-1.0, -1.0], ["first", "second"]) == "first"
    with pytest.raises(ValueError):
        rank_choice([1.0], ["a", "b"])


def test_aggregates() -> None:
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.0, 1.0])
    assert (mean, std) == (0.5, 0.5)
    assert sum(softmax([-1000.0, -1000.0])) == pytest.approx(1.0)
