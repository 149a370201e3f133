"""Engine results as TGI's response models (tokens, details, finish reasons); used by the TGI
and the Hugging Face routes."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from fewshot.api.schemas_tgi import Details, PrefillToken, StreamDetails, Token
from fewshot.engine.types import GenerationResult, TokenInfo

# TGI knows three finish reasons; a time limit or an abort ends like a length limit
_FINISH = {"length": "length", "eos_token": "eos_token", "stop_sequence": "stop_sequence"}


def finish_reason(result: GenerationResult) -> str:
    return _FINISH.get(result.finish_reason, "length")


def token(info: TokenInfo) -> Token:
    return Token(id=info.id, text=info.text, logprob=info.logprob, special=info.special)


def top_tokens(info: TokenInfo, special_ids: AbstractSet[int]) -> list[Token]:
    return [
        Token(id=t.id, text=t.text, logprob=t.logprob, special=t.id in special_ids)
        for t in info.top
    ]


def empty_token() -> Token:
    """Stands in for the token of a final event that has none (an aborted sequence)."""
    return Token(id=0, text="", logprob=None, special=True)


def details(result: GenerationResult, *, top_n: int, special_ids: AbstractSet[int]) -> Details:
    """`details` of a GenerateResponse (`top_tokens` set only when asked for)."""
    extra = {"top_tokens": [top_tokens(t, special_ids) for t in result.tokens]} if top_n else {}
    return Details(
        finish_reason=finish_reason(result),
        generated_tokens=result.generated_tokens,
        seed=result.seed,
        prefill=[
            PrefillToken(id=p.id, text=p.text, logprob=p.logprob) for p in (result.prefill or [])
        ],
        tokens=[token(t) for t in result.tokens],
        **extra,
    )


def stream_details(result: GenerationResult) -> StreamDetails:
    return StreamDetails(
        finish_reason=finish_reason(result),
        generated_tokens=result.generated_tokens,
        seed=result.seed,
        input_length=result.prompt_tokens,
        prefix_cache_tokens=result.cached_tokens,
    )


def special_ids(llm: Any) -> AbstractSet[int]:
    ids = getattr(llm.tokenizer, "special_ids", None)
    if callable(ids):
        ids = ids()
    return ids if isinstance(ids, frozenset) else frozenset(ids or ())
