"""Scoring of few-shot answers: normalisation, exact match, accuracy and its confidence interval
(Wilson). Rank classification lives in `fewshot.toolkit.choices`.

Normalisation (applied to both the prediction and every accepted answer):
Unicode NFKC, case folding, surrounding quotes and a final period removed, internal whitespace
collapsed. Accents are kept ("été" != "ete"): they are part of a French answer.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable

_WS = re.compile(r"\s+")
_QUOTES = "\"'`“”‘’«»"


def normalize(text: str) -> str:
    """The comparable form of an answer (see the module docstring)."""
    s = unicodedata.normalize("NFKC", text).casefold().strip()
    s = s.strip(_QUOTES).strip()
    s = s.rstrip(".!").strip()
    return _WS.sub(" ", s)


def exact_match(prediction: str, answers: str | Iterable[str]) -> bool:
    """True when the normalised prediction equals one normalised accepted answer."""
    accepted = [answers] if isinstance(answers, str) else list(answers)
    pred = normalize(prediction)
    return any(pred == normalize(a) for a in accepted)


def accuracy(correct: Iterable[bool]) -> float:
    """Fraction of true values (0.0 for an empty iterable)."""
    values = list(correct)
    return sum(values) / len(values) if values else 0.0


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for the default z); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= n:
        raise ValueError("need 0 <= correct <= n")
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
