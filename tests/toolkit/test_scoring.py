"""Answer normalisation, exact match, rank choice and aggregates."""

from __future__ import annotations

import pytest

from fewshot.toolkit.choices import best, continuation, rank_groups
from fewshot.toolkit.scoring import accuracy, exact_match, normalize


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


def test_best_choice_ties_and_the_continuation_rule() -> None:
    assert best([-3.0, -1.0, -2.0]) == 1
    assert best([-1.0, -1.0]) == 0  # the first one on ties
    with pytest.raises(ValueError):
        best([])
    assert continuation("Sentiment:", "positive") == " positive"
    assert continuation("Sentiment: ", "positive") == "positive"  # the space is the prompt's
    assert continuation("Sentiment:\n", "positive") == "positive"
    assert continuation("Sentiment:", " positive") == " positive"  # scored as given


def test_rank_groups_makes_one_call_and_splits_it() -> None:
    calls: list[list[tuple[str, str]]] = []

    def score(pairs):  # noqa: ANN001, ANN202
        calls.append(list(pairs))
        return [-len(c) for _, c in pairs]  # shorter is likelier

    ranked = rank_groups(score, [("a", [" xx", " x"]), ("b", [" y", " yyy", " yy"])])
    assert len(calls) == 1 and len(calls[0]) == 5
    assert [r.index for r in ranked] == [1, 0]
    assert ranked[1].logprobs == [-2.0, -4.0, -3.0]
    assert sum(ranked[1].probabilities) == pytest.approx(1.0)


def test_accuracy() -> None:
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0
