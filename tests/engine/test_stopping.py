"""Stop strings on decoded text across token boundaries; holdback; token-level stop reasons."""

from __future__ import annotations

import time

from fewshot.engine.stopping import StoppingCriteria, StopStrings
from fewshot.engine.types import SamplingParams


def test_stop_string_spanning_pieces_kept_or_trimmed() -> None:
    for include, expected in ((True, "Hello ###"), (False, "Hello ")):
        stops = StopStrings(["###"], include_stop=include)
        assert stops.feed("Hel") is None
        assert stops.feed("lo #") is None
        match = stops.feed("## and more")
        assert match is not None and match.stop == "###" and match.start == 6
        assert stops.text == expected


def test_holdback_while_tail_could_start_a_stop() -> None:
    stops = StopStrings(["###", "\nQ:"])
    stops.feed("answer #")
    assert stops.releasable() == len("answer ")
    stops.feed("#")
    assert stops.releasable() == len("answer ")
    stops.feed("x\n")
    assert stops.releasable() == len("answer ##x")
    stops.feed("A")
    assert stops.releasable() == len(stops.text)


def test_earliest_stop_wins() -> None:
    stops = StopStrings(["END", "\n"], include_stop=False)
    stops.feed("a\nb END")
    assert stops.match is not None and stops.match.stop == "\n"
    assert stops.text == "a"


def test_criteria_eos_length_and_ignore_eos() -> None:
    crit = StoppingCriteria(SamplingParams(max_new_tokens=3), eos_token_ids=[9])
    assert crit.after_token(1, "a", 1, 5) is None
    assert crit.after_token(9, "", 2, 6) == "eos_token"
    ignore = StoppingCriteria(SamplingParams(max_new_tokens=3, ignore_eos=True), [9])
    assert ignore.after_token(9, "", 2, 6) is None
    assert ignore.after_token(9, "", 3, 7) == "length"
    capped = StoppingCriteria(SamplingParams(max_new_tokens=100), [9], max_length=10)
    assert capped.after_token(1, "x", 1, 10) == "length"


def test_criteria_stop_string_and_time() -> None:
    crit = StoppingCriteria(SamplingParams(stop=["\n\n"], max_time=0.01), [0])
    assert crit.after_token(5, "x\n", 1, 2) is None
    assert crit.after_token(5, "\ny", 2, 3) == "stop_sequence"
    assert crit.text.text == "x\n\n"
    assert crit.timed_out(time.monotonic() + 1)
    assert not StoppingCriteria(SamplingParams(), [0]).timed_out(time.monotonic() + 1e6)
