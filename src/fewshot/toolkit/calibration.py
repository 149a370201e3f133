"""Contextual calibration of label probabilities (Zhao et al. 2021, "Calibrate Before Use").

A small model's rank classification is biased towards some labels by the prompt itself (the
majority or the last label of the demonstrations, common tokens). Contextual calibration
estimates that bias by scoring every label after *content-free* inputs (``N/A``, the empty
string, ``[MASK]``) in the same prompt, averages their label probabilities into ``p_cf``, and
then divides each query's label probabilities by ``p_cf`` and renormalises: the paper's
``W = diag(p_cf)^-1, b = 0``. A label the prompt favours regardless of the input loses exactly
that advantage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONTENT_FREE = ("N/A", "", "[MASK]")


def label_probabilities(logprobs: Sequence[float]) -> np.ndarray:
    """Probabilities over the label set from per-label log-likelihoods (softmax)."""
    x = np.asarray(logprobs, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def content_free_prior(content_free_logprobs: Sequence[Sequence[float]]) -> np.ndarray:
    """``p_cf``: the mean label distribution over the content-free inputs."""
    if not content_free_logprobs:
        raise ValueError("need the label scores of at least one content-free input")
    return np.mean([label_probabilities(s) for s in content_free_logprobs], axis=0)


def calibrate(logprobs: Sequence[float], prior: np.ndarray) -> np.ndarray:
    """Calibrated label probabilities: ``softmax(logprobs) / prior``, renormalised."""
    p = label_probabilities(logprobs) / np.maximum(prior, 1e-12)
    return p / p.sum()
