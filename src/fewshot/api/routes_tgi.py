"""Text Generation Inference routes: POST /generate, /generate_stream, / (compat), /tokenize;
GET /info, /health, /metrics.

Generation follows TGI: no `parameters` key means sampling (TGI's default_parameters), stop
sequences stay in the text, /generate_stream sends `data:` events whose last one carries
`generated_text` (and `details` when asked) and no `[DONE]`. Errors are
`{"error", "error_type"}` with TGI's status codes.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from fewshot import __version__
from fewshot.api import choices, tgi_format
from fewshot.api.auth import require_api_key
from fewshot.api.errors import ApiError, ValidationFailed, error_body
from fewshot.api.generation import (
    Job,
    Limits,
    RequestScope,
    Stream,
    check_count,
    generate,
    header_flag,
    prepare,
    timing_headers,
    tokenize,
)
from fewshot.api.metrics import CONTENT_TYPE
from fewshot.api.openapi import event_stream
from fewshot.api.schemas_tgi import (
    CompatGenerateRequest,
    ErrorResponse,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    Info,
    SimpleToken,
    StreamResponse,
    TokenizeRequest,
)
from fewshot.api.sse import KEEPALIVE, EventStream, event
from fewshot.api.state import AppState, ServedModel, get_state
from fewshot.engine.types import SamplingParams

router = APIRouter(tags=["TGI"], dependencies=[Depends(require_api_key)])
public = APIRouter(tags=["TGI"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 422, 424, 429, 503)
}
_SSE = event_stream(StreamResponse, "Events; the last one carries generated_text")


def _param(name: str) -> str:
    return name if name == "inputs" else f"parameters.{name}"


def sampling(
    p: GenerateParameters | None, state: AppState
) -> tuple[SamplingParams, GenerateParameters]:
    """TGI parameters -> SamplingParams. Sampling when do_sample, or any warper is active."""
    if p is None:  # no `parameters` key at all: TGI samples
        p = GenerateParameters(do_sample=True)
    s = state.settings
    check_count(p.stop, s.max_stop_sequences, "parameters.stop", "stop sequences")
    if (p.top_n_tokens or 0) > s.max_top_n_tokens:
        raise ValidationFailed.one("parameters.top_n_tokens", f"must be <= {s.max_top_n_tokens}")
    warped = (
        (p.temperature is not None and p.temperature != 1.0)
        or p.top_k is not None
        or (p.top_p is not None and p.top_p < 1.0)
    )
    params = SamplingParams(
        temperature=1.0 if p.temperature is None else p.temperature,
        do_sample=p.do_sample or warped,
        top_k=p.top_k,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
        stop=list(p.stop),
        include_stop=True,
        top_n_tokens=p.top_n_tokens or 0,
        prompt_logprobs=p.decoder_input_details,
    )
    return params, p


async def _job(
    state: AppState,
    model: ServedModel,
    request: Request,
    body: GenerateRequest,
    wait: bool = False,
    include_stop: bool = True,
) -> tuple[Any, Job, GenerateParameters]:
    wait = wait or bool(header_flag(request.headers, "x-wait-for-model"))
    llm = await state.llm_for(model, wait=wait)
    params, p = sampling(body.parameters, state)
    params.include_stop = include_stop
    prompt: str | list[int] = body.inputs
    if p.truncate is not None and body.inputs:
        prompt = llm.encode(body.inputs)[-p.truncate :]
    job = prepare(
        llm,
        Limits.of(state, llm),
        prompt,
        params,
        p.max_new_tokens,
        input_field="inputs",
        default_new=state.settings.max_new_tokens_default,
        rename=_param,
    )
    if isinstance(prompt, list):
        job.prompt = body.inputs
    return llm, job, p


def _response(job: Job, result: Any, p: GenerateParameters, llm: Any) -> dict[str, Any]:
    text = job.prompt + result.text if p.return_full_text else result.text
    if not (p.details or p.decoder_input_details):
        return GenerateResponse(generated_text=text).body()
    special = tgi_format.special_ids(llm)
    details = tgi_format.details(result, top_n=p.top_n_tokens or 0, special_ids=special)
    return GenerateResponse(generated_text=text, details=details).body()


async def _generate(
    state: AppState, request: Request, body: GenerateRequest, route: str
) -> tuple[dict[str, Any], dict[str, str]]:
    model = state.resolve(body.model)
    with RequestScope(state, model, route) as scope:
        if body.parameters is not None and body.parameters.choices is not None:
            wait = bool(header_flag(request.headers, "x-wait-for-model"))
            llm = await state.llm_for(model, wait=wait)
            chosen = await choices.choose(
                state,
                llm,
                [body.inputs],
                body.parameters.choices,
                field="parameters.choices",
                input_field="inputs",
            )
            return choices.tgi_item(chosen[0]), {}
        llm, job, p = await _job(state, model, request, body)
        results = await generate(state, model, llm, [job], rename=_param)
        return _response(job, results[0][0], p, llm), timing_headers(scope, results)


async def stream_response(
    state: AppState,
    request: Request,
    body: GenerateRequest,
    route: str,
    *,
    wait: bool = False,
    include_stop: bool = True,
) -> EventStream:
    """A /generate_stream answer (also used by `/` and the HF route with `stream: true`)."""
    if body.parameters is not None and body.parameters.choices is not None:
        raise choices.no_stream("parameters.choices")
    model = state.resolve(body.model)
    with RequestScope(state, model, route) as scope:
        llm, job, p = await _job(state, model, request, body, wait, include_stop)
        if p.decoder_input_details:
            raise ValidationFailed.one(
                "parameters.decoder_input_details",
                "`decoder_input_details` == true is not supported when streaming tokens",
            )
        stream = Stream(state, scope, llm, [job], rename=_param)
    return EventStream(
        _tgi_events(stream, job, p, tgi_format.special_ids(llm)), on_close=stream.close
    )


async def _tgi_events(
    stream: Stream, job: Job, p: GenerateParameters, special: AbstractSet[int]
) -> Any:
    try:
        async for item in stream.events():
            if item is None:
                yield KEEPALIVE
                continue
            _, ev = item
            fields: dict[str, Any] = {"generated_text": None, "details": None}
            if p.top_n_tokens and ev.token is not None:
                fields["top_tokens"] = tgi_format.top_tokens(ev.token, special)
            if ev.result is not None:
                r = ev.result
                fields["generated_text"] = job.prompt + r.text if p.return_full_text else r.text
                if p.details:
                    fields["details"] = tgi_format.stream_details(r)
            token = tgi_format.token(ev.token) if ev.token else tgi_format.empty_token()
            yield event(StreamResponse(index=ev.index, token=token, **fields).body())
    except ApiError as exc:
        yield event(error_body(exc, "tgi"))


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=_ERRORS,
    summary="Generate text (TGI)",
)
async def tgi_generate(
    body: GenerateRequest, request: Request, state: AppState = Depends(get_state)
) -> JSONResponse:
    out, headers = await _generate(state, request, body, "/generate")
    return JSONResponse(out, headers=headers)


@router.post(
    "/generate_stream",
    responses={200: _SSE, **_ERRORS},
    response_class=EventStream,
    summary="Generate text as server-sent events (TGI)",
)
async def tgi_generate_stream(
    body: GenerateRequest, request: Request, state: AppState = Depends(get_state)
) -> EventStream:
    return await stream_response(state, request, body, "/generate_stream")


@router.post(
    "/",
    response_model=list[GenerateResponse],
    responses={200: _SSE, **_ERRORS},
    summary="TGI compat route: a list with one GenerateResponse, or events when `stream`",
)
async def tgi_compat(
    body: CompatGenerateRequest, request: Request, state: AppState = Depends(get_state)
) -> Response:
    if body.stream:
        return await stream_response(state, request, body, "/")
    out, headers = await _generate(state, request, body, "/")
    return JSONResponse([out], headers=headers)


@router.post(
    "/tokenize", response_model=list[SimpleToken], responses=_ERRORS, summary="Tokenize (TGI)"
)
async def tgi_tokenize(
    body: TokenizeRequest, request: Request, state: AppState = Depends(get_state)
) -> JSONResponse:
    model = state.resolve(body.model)
    llm = await state.llm_for(model, wait=bool(header_flag(request.headers, "x-wait-for-model")))
    if not body.inputs:
        raise ValidationFailed.one("inputs", "must not be empty")
    return JSONResponse(tokenize(llm, body.inputs))


@public.get("/info", response_model=Info, summary="Model and router limits (TGI)")
async def tgi_info(state: AppState = Depends(get_state)) -> JSONResponse:
    s = state.settings
    default = state.default_model
    limits = Limits.of(state, default.llm) if default.llm is not None else None
    info = Info(
        model_id=default.name,
        model_dtype=default.llm.dtype if default.llm is not None else s.dtype,
        max_concurrent_requests=s.max_concurrent_requests,
        max_stop_sequences=s.max_stop_sequences,
        max_input_tokens=limits.max_input if limits else s.max_input_tokens,
        max_total_tokens=limits.max_total if limits else s.max_total_tokens,
        max_client_batch_size=s.max_client_batch_size,
        version=__version__,
        models=[
            {
                "name": m.name,
                "source": m.source,
                "status": m.status,
                "error": m.error,
                "backend": m.backend,
                "prefix_sharing": m.prefix_sharing,
                "dtype": m.llm.dtype if m.llm is not None else None,
            }
            for m in state.models
        ],
    )
    return JSONResponse(info.model_dump())


@public.get(
    "/health",
    responses={200: {"description": "Every model is loaded"}, 503: {"model": ErrorResponse}},
    summary="200 when every model is loaded, else 503 (TGI)",
)
async def tgi_health(state: AppState = Depends(get_state)) -> Response:
    if state.draining:  # load balancers stop sending traffic
        body = {"error": "unhealthy", "error_type": "shutting_down", "detail": "shutting down"}
        return JSONResponse(body, status_code=503)
    pending = [m for m in state.models if m.llm is None]
    if not pending:
        return Response(status_code=200)
    detail = "; ".join(f"{m.name}: {m.error or 'loading'}" for m in pending)
    body = {"error": "unhealthy", "error_type": "healthcheck", "detail": detail}
    return JSONResponse(body, status_code=503)


@public.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
    summary="Prometheus metrics",
)
async def metrics(state: AppState = Depends(get_state)) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
