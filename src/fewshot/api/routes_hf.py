"""Hugging Face Inference API route: POST /models/{model_id} (text generation), as the seed
blog's `query()` calls it.

Replies `[{"generated_text"}]` (one dict per return sequence; a list of such lists for a list
of inputs). `options.use_cache` answers identical deterministic requests (greedy, or seeded)
from an LRU cache; `options.wait_for_model` waits for a loading model instead of the 503
`{"error": "Model X is currently loading", "estimated_time": s}`. The 2024 API's headers
`x-use-cache` / `x-wait-for-model` work too, and `stream: true` answers with TGI events.
Headers: x-compute-type, x-compute-time, x-prefix-cache-tokens (prompt tokens served from the
prefix cache) and TGI's timing headers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response

from fewshot.api import choices, tgi_format
from fewshot.api.auth import require_api_key
from fewshot.api.errors import ValidationFailed
from fewshot.api.generation import (
    Limits,
    RequestScope,
    check_count,
    generate,
    header_flag,
    prepare,
    timing_headers,
)
from fewshot.api.routes_tgi import stream_response
from fewshot.api.schemas_hf import (
    GeneratedText,
    HFErrorResponse,
    HFOptions,
    HFParameters,
    HFRequest,
)
from fewshot.api.schemas_tgi import GenerateParameters, GenerateRequest
from fewshot.api.state import AppState, ServedModel, get_state
from fewshot.engine.types import GenerationResult, SamplingParams

router = APIRouter(tags=["Hugging Face Inference API"], dependencies=[Depends(require_api_key)])

ROUTE = "/models/{model_id:path}"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": HFErrorResponse} for code in (400, 401, 404, 413, 429, 500, 503)
}


def _param(name: str) -> str:
    return name if name == "inputs" else f"parameters.{name}"


def sampling(p: HFParameters, state: AppState) -> SamplingParams:
    """Legacy parameters -> SamplingParams (do_sample defaults to true; temperature 0 is greedy).

    end_sequence is trimmed from the text; `stop` sequences are kept (TGI semantics). With
    both, the engine keeps every match and `_text` trims a final end_sequence.
    """
    stops = list(p.stop) + ([p.end_sequence] if p.end_sequence else [])
    check_count(
        stops,
        state.settings.max_stop_sequences,
        "parameters.stop",
        "stop sequences (stop + end_sequence)",
    )
    return SamplingParams(
        temperature=1.0 if p.temperature is None else p.temperature,
        do_sample=True if p.do_sample is None else p.do_sample,
        top_k=p.top_k,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
        stop=stops,
        include_stop=not (p.end_sequence and not p.stop),
        max_time=p.max_time,
        n=p.num_return_sequences,
    )


def _text(prompt: str, result: GenerationResult, p: HFParameters) -> str:
    text = result.text
    end = p.end_sequence
    if end and p.stop and result.finish_reason == "stop_sequence" and text.endswith(end):
        text = text[: -len(end)]
    return prompt + text if p.return_full_text else text


def sampling_preview(p: HFParameters) -> SamplingParams:
    """Just enough of the parameters to tell whether the request is deterministic."""
    return SamplingParams(
        temperature=1.0 if p.temperature is None else p.temperature,
        do_sample=True if p.do_sample is None else p.do_sample,
        seed=p.seed,
    )


@router.post(
    ROUTE,
    response_model=list[GeneratedText] | list[list[GeneratedText]],
    responses=_ERRORS,
    summary="Text generation, Hugging Face Inference API format",
)
async def hf_generate(
    body: HFRequest,
    request: Request,
    model_id: str = Path(..., description="Served model name, alias, or source"),
    state: AppState = Depends(get_state),
) -> Response:
    model = state.resolve(model_id)
    p = body.parameters or HFParameters()
    opts = body.options or HFOptions()
    wait = opts.wait_for_model or bool(header_flag(request.headers, "x-wait-for-model"))
    use_cache = opts.use_cache and header_flag(request.headers, "x-use-cache") is not False
    prompts = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    if isinstance(body.inputs, list):
        if not prompts:
            raise ValidationFailed.one("inputs", "must not be an empty list")
        check_count(prompts, state.settings.max_client_batch_size, "inputs", "inputs per request")
    if p.choices is not None:
        if body.stream:
            raise choices.no_stream("parameters.choices")
        return await _choose(state, model, body, p.choices, wait)
    if body.stream:
        return await _stream(state, request, model, body, p)

    preview = sampling_preview(p)
    key = None
    if use_cache and (preview.greedy or preview.seed is not None):
        key = state.response_cache.key(model.name, body.inputs, p.model_dump())
        hit = state.response_cache.get(key)
        if hit is not None:
            state.metrics.requests.labels(model.name, ROUTE).inc()
            state.metrics.response_cache_hits.labels(model.name).inc()
            headers = {**hit["headers"], "x-compute-time": "0.000000", "x-cache": "hit"}
            return JSONResponse(hit["body"], headers=headers)

    with RequestScope(state, model, ROUTE) as scope:
        llm = await state.llm_for(model, wait=wait)
        limits = Limits.of(state, llm)
        template = sampling(p, state)
        jobs = [
            prepare(
                llm,
                limits,
                prompt,
                dataclasses.replace(template, stop=list(template.stop)),
                p.max_new_tokens,
                input_field="inputs" if len(prompts) == 1 else f"inputs.{i}",
                default_new=state.settings.max_new_tokens_default,
                rename=_param,
            )
            for i, prompt in enumerate(prompts)
        ]
        results = await generate(state, model, llm, jobs, rename=_param)
        special = tgi_format.special_ids(llm) if p.details else set()
        outputs = [
            [_item(job.prompt, r, p, special) for r in rs]
            for job, rs in zip(jobs, results, strict=True)
        ]
        out: Any = outputs if isinstance(body.inputs, list) else outputs[0]
        headers = timing_headers(scope, results)
    if key is not None:
        state.response_cache.put(key, {"body": out, "headers": headers})
    return JSONResponse(out, headers={**headers, "x-cache": "miss"})


async def _choose(
    state: AppState, model: ServedModel, body: HFRequest, options: list[str], wait: bool
) -> Response:
    """`parameters.choices`: the most likely choice per input (see fewshot.api.choices)."""
    prompts = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    with RequestScope(state, model, ROUTE):
        llm = await state.llm_for(model, wait=wait)
        chosen = await choices.choose(
            state, llm, prompts, options, field="parameters.choices", input_field="inputs"
        )
    items = [[choices.tgi_item(c)] for c in chosen]
    return JSONResponse(items if isinstance(body.inputs, list) else items[0])


def _item(
    prompt: str, result: GenerationResult, p: HFParameters, special: set[int]
) -> dict[str, Any]:
    text = _text(prompt, result, p)
    if not p.details:
        return GeneratedText(generated_text=text).body()
    details = tgi_format.details(result, top_n=0, special_ids=special)
    return GeneratedText(generated_text=text, details=details).body()


async def _stream(
    state: AppState, request: Request, model: ServedModel, body: HFRequest, p: HFParameters
) -> Response:
    """`stream: true`: TGI's /generate_stream events for a single input."""
    if isinstance(body.inputs, list):
        raise ValidationFailed.one("stream", "streaming takes a single input")
    if p.num_return_sequences != 1:
        raise ValidationFailed.one("parameters.num_return_sequences", "must be 1 when streaming")
    sampled = sampling(p, state)
    # already validated against the (narrower) legacy ranges; max_new_tokens 0 is legacy-only
    tgi = GenerateParameters.model_construct(
        do_sample=sampled.do_sample,
        temperature=sampled.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
        stop=sampled.stop,
        max_new_tokens=p.max_new_tokens,
        return_full_text=p.return_full_text,
        details=p.details,
    )
    wait = (body.options or HFOptions()).wait_for_model
    req = GenerateRequest(inputs=body.inputs, parameters=tgi, model=model.name)
    return await stream_response(
        state, request, req, ROUTE, wait=wait, include_stop=sampled.include_stop
    )
