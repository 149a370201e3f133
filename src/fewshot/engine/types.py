"""Plain data types shared by the engine, the toolkit and the API: request parameters and results.

This module is the contract between layers: the engine fills these objects, the API and the
toolkit read them. No torch here, so the API layer can validate without touching the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

#: Below this temperature sampling is greedy: softmax(logits / t) is one-hot to float32
#: precision, and dividing by a subnormal t would overflow to inf/NaN.
MIN_SAMPLING_TEMPERATURE = 1e-4

FinishReason = Literal["length", "eos_token", "stop_sequence", "time", "aborted"]


class GenerationError(RuntimeError):
    """A request failed inside the engine (the engine itself keeps running)."""


class ParameterError(ValueError):
    """A generation parameter is invalid. `param` names it, so every layer can report it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"`{param}`: {message}")
        self.param = param
        self.message = message


@dataclass
class SamplingParams:
    """Everything that controls one generation. Validated by `validate()`.

    Greedy decoding when `do_sample` is false or `temperature` is below
    MIN_SAMPLING_TEMPERATURE (0 included). Every float must be finite.
    """

    max_new_tokens: int = 20
    temperature: float = 1.0
    do_sample: bool = False
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    include_stop: bool = True  # keep the matched stop string in the text (TGI) or trim it (OpenAI)
    max_time: float | None = None  # seconds, soft limit
    n: int = 1  # independent return sequences (num_return_sequences / OpenAI n)
    top_n_tokens: int = 0  # alternatives reported per generated token
    prompt_logprobs: bool = (
        False  # report logprobs of the prompt tokens (decoder_input_details / echo)
    )
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return (not self.do_sample) or self.temperature < MIN_SAMPLING_TEMPERATURE

    def validate(self) -> SamplingParams:
        """Raise ParameterError naming the first bad field; return self when valid."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise ParameterError("max_new_tokens", "must be an integer >= 0")
        for name in ("temperature", "top_p", "repetition_penalty", "max_time"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ParameterError(name, "must be a finite number")
        if self.temperature < 0:
            raise ParameterError("temperature", "must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ParameterError("top_k", "must be >= 1")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ParameterError("top_p", "must be in (0, 1]")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ParameterError("repetition_penalty", "must be > 0")
        if self.max_time is not None and self.max_time <= 0:
            raise ParameterError("max_time", "must be > 0")
        if self.n < 1:
            raise ParameterError("n", "must be >= 1")
        if self.top_n_tokens < 0:
            raise ParameterError("top_n_tokens", "must be >= 0")
        if self.seed is not None and not (0 <= self.seed < 2**64):
            raise ParameterError("seed", "must be an integer in [0, 2**64)")
        if any((not isinstance(s, str)) or s == "" for s in self.stop):
            raise ParameterError("stop", "stop sequences must be non-empty strings")
        return self


@dataclass
class TopToken:
    """One alternative at a position: token id, its text and its log-probability."""

    id: int
    text: str
    logprob: float


@dataclass
class TokenInfo:
    """One token of a prompt or a generation.

    `text` is the token's own decoded piece; in a stream it is the incremental text that became
    printable with this token (possibly "" while a multi-byte character is incomplete).
    """

    id: int
    text: str
    logprob: float | None
    special: bool = False
    top: list[TopToken] = field(default_factory=list)


@dataclass
class GenerationResult:
    """A finished generation (one return sequence)."""

    text: str  # generated text only (never the prompt); stop string kept or trimmed per params
    token_ids: list[int]
    tokens: list[TokenInfo]
    finish_reason: FinishReason
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    seed: int | None = None
    prefill: list[TokenInfo] | None = None  # prompt tokens with logprobs when asked for
    time_to_first_token: float = 0.0  # seconds from admission to the first token
    total_time: float = 0.0
    queue_time: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class StreamEvent:
    """One step of a streamed generation: a new token, and at the end the final result."""

    index: int  # which return sequence (0..n-1)
    token: TokenInfo | None
    result: GenerationResult | None = None  # set on the last event of this sequence
    error: str | None = None  # set (alone) when the whole request failed; no event follows
