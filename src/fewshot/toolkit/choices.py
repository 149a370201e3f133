"""Rank classification over a set of choices: the one implementation behind `fewshot eval`'s
``rank`` method and the API's ``choices`` parameter.

Each choice is scored by the log-likelihood of its continuation after the prompt (the sum of its
tokens' log-probabilities, `LLM.loglikelihood`); the most likely choice wins, the first one on
ties. All continuations of all prompts given together go to the scorer in one call, so the
engine batches them and its prefix cache serves the prompt they share: a prompt is prefilled
once, then each choice adds only its own few tokens.

The API's continuation rule (`continuation`): a choice is scored after the prompt with one
space in between, unless the prompt already ends in whitespace (`LLM.loglikelihood` then moves
that whitespace into the continuation) or the choice starts with whitespace (scored as given).
`"...Sentiment:"` + `"positive"` is scored as `" positive"`, the token a model would generate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fewshot.toolkit.calibration import label_probabilities

MAX_CHOICES = 64
MAX_CHOICE_CHARS = 256

Scorer = Callable[[Sequence[tuple[str, str]]], list[float]]


def check_choices(choices: Sequence[Any]) -> list[str]:
    """The choices as a list of strings, or ValueError saying what is wrong with them."""
    if not isinstance(choices, list | tuple):
        raise ValueError("must be a list of strings")
    if not choices:
        raise ValueError("must not be empty")
    if len(choices) > MAX_CHOICES:
        raise ValueError(f"supports up to {MAX_CHOICES} choices. Given: {len(choices)}")
    for c in choices:
        if not isinstance(c, str):
            raise ValueError("must be a list of strings")
        if not c.strip():
            raise ValueError("choices must be non-empty strings")
        if len(c) > MAX_CHOICE_CHARS:
            raise ValueError(f"each choice must have at most {MAX_CHOICE_CHARS} characters")
    if len(set(choices)) != len(choices):
        raise ValueError("choices must be distinct")
    return list(choices)


def continuation(prompt: str, choice: str) -> str:
    """What is scored after `prompt` for `choice` (see the module docstring)."""
    if not prompt or prompt[-1].isspace() or choice[:1].isspace():
        return choice
    return " " + choice


@dataclass
class Ranked:
    """The scores of one prompt's choices and the winner."""

    index: int
    logprobs: list[float]

    @property
    def probabilities(self) -> list[float]:
        """The choices' probabilities renormalised over the choice set."""
        return [float(p) for p in label_probabilities(self.logprobs)]


def best(logprobs: Sequence[float]) -> int:
    """Index of the highest score, the first one on ties."""
    if not logprobs:
        raise ValueError("need at least one score")
    return max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))


def rank_groups(score: Scorer, groups: Sequence[tuple[str, Sequence[str]]]) -> list[Ranked]:
    """Score every (prompt, continuations) group in one call of `score`; one Ranked per group."""
    pairs = [(prompt, cont) for prompt, conts in groups for cont in conts]
    flat = list(score(pairs)) if pairs else []
    out, start = [], 0
    for _, conts in groups:
        scores = [float(s) for s in flat[start : start + len(conts)]]
        start += len(conts)
        out.append(Ranked(best(scores), scores))
    return out


def llm_scorer(llm: Any) -> Scorer:
    """A Scorer over a local `fewshot.engine.llm.LLM` (sums of continuation logprobs)."""

    def score(pairs: Sequence[tuple[str, str]]) -> list[float]:
        return [total for total, _ in llm.loglikelihood(list(pairs))]

    return score


def rank_choices(score: Scorer, prompts: Sequence[str], choices: Sequence[str]) -> list[Ranked]:
    """Rank the same `choices` after each prompt, with the API's continuation rule."""
    return rank_groups(score, [(p, [continuation(p, c) for c in choices]) for p in prompts])
