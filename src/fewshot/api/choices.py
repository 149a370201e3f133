"""Answers constrained to a set of choices: `parameters.choices` on the HF route, `/generate`
and `/`, and `guided_choice` on `/v1/completions` (vLLM's name for the same extension; OpenAI's
own response field is `choices`, so the request field cannot be).

Each choice is scored after the prompt by `fewshot.toolkit.choices.rank_choices` over
`LLM.loglikelihood`, the same rank classification `fewshot eval` uses: all choices of all
prompts of a request are submitted together, so the engine batches them and the prefix cache
serves the shared prompt. The answer is always one of the choices, given back exactly as sent;
`return_full_text`, `echo` and the sampling parameters do not apply. Streaming with choices is a
validation error naming the choices field.

Details: HF and TGI answer `details.choices: [{"text", "logprob"}]` (always included),
`finish_reason: "eos_token"` (what TGI reports when a constrained answer completes) and
`generated_tokens`: the chosen continuation's tokens. OpenAI answers `logprobs` with the chosen
text as the one token and every choice's log-probability in `top_logprobs[0]`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fewshot.api.errors import GenerationFailed, ValidationFailed
from fewshot.api.generation import Limits, check_prompt, encode
from fewshot.api.schemas_openai import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    Usage,
)
from fewshot.api.state import AppState
from fewshot.engine.types import GenerationError, ParameterError
from fewshot.toolkit.choices import continuation, llm_scorer, rank_choices


@dataclass
class Chosen:
    """One prompt's answer: the winning choice, every choice's logprob, token counts."""

    text: str
    logprobs: dict[str, float]
    prompt_tokens: int
    generated_tokens: int


def no_stream(field: str) -> ValidationFailed:
    return ValidationFailed.one(field, "cannot be combined with streaming")


async def choose(
    state: AppState,
    llm: Any,
    prompts: list[str],
    choices: list[str],
    *,
    field: str,
    input_field: str,
) -> list[Chosen]:
    """Check the prompts against the limits and rank the choices after each one."""
    limits = Limits.of(state, llm)
    sizes: list[tuple[int, list[int]]] = []
    for i, prompt in enumerate(prompts):
        where = input_field if len(prompts) == 1 else f"{input_field}.{i}"
        ids = encode(llm, prompt) if prompt else []
        check_prompt(ids, limits, where)
        lengths = [len(encode(llm, continuation(prompt, c))) for c in choices]
        if len(ids) + max(lengths) > limits.max_total:
            raise ValidationFailed.one(
                field,
                f"the prompt's {len(ids)} tokens + the longest choice's {max(lengths)} must be "
                f"<= {limits.max_total}",
                "length",
            )
        sizes.append((len(ids), lengths))
    try:
        ranked = await asyncio.to_thread(rank_choices, llm_scorer(llm), prompts, choices)
    except ParameterError as exc:
        raise ValidationFailed.one(field, exc.message) from exc
    except GenerationError as exc:
        raise GenerationFailed(f"scoring failed: {exc}") from exc
    return [
        Chosen(
            text=choices[r.index],
            logprobs=dict(zip(choices, r.logprobs, strict=True)),
            prompt_tokens=n_prompt,
            generated_tokens=lengths[r.index],
        )
        for r, (n_prompt, lengths) in zip(ranked, sizes, strict=True)
    ]


def tgi_item(chosen: Chosen) -> dict[str, Any]:
    """`{"generated_text", "details"}` (TGI /generate, HF route items)."""
    return {
        "generated_text": chosen.text,
        "details": {
            "finish_reason": "eos_token",
            "generated_tokens": chosen.generated_tokens,
            "seed": None,
            "prefill": [],
            "tokens": [],
            "choices": [{"text": t, "logprob": lp} for t, lp in chosen.logprobs.items()],
        },
    }


def openai_choice(chosen: Chosen, index: int) -> CompletionChoice:
    """One entry of a completion's `choices`."""
    return CompletionChoice(
        text=chosen.text,
        index=index,
        logprobs=CompletionLogprobs(
            tokens=[chosen.text],
            token_logprobs=[chosen.logprobs[chosen.text]],
            top_logprobs=[dict(chosen.logprobs)],
            text_offset=[0],
        ),
        finish_reason="stop",
    )


def openai_completion(chosen: list[Chosen], model: str) -> dict[str, Any]:
    """A /v1/completions answer for `guided_choice`."""
    prompt_tokens = sum(c.prompt_tokens for c in chosen)
    completion_tokens = sum(c.generated_tokens for c in chosen)
    out = CompletionResponse(
        **CompletionResponse.envelope(model),
        choices=[openai_choice(c, i) for i, c in enumerate(chosen)],
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )
    return out.body()
