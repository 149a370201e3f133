"""OpenAI-compatible routes: POST /v1/completions, /v1/chat/completions; GET /v1/models.

Temperature 0 is greedy; stop sequences are trimmed from the text; `n` choices per prompt
(choice index = prompt index * n + i); `logprobs` / `echo` report generated and prompt
logprobs; streams end with `data: [DONE]` (with the space); `stream_options.include_usage`
adds a last chunk with the usage. Errors are `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from fewshot.api import choices
from fewshot.api import openai_format as fmt
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
)
from fewshot.api.openapi import event_stream
from fewshot.api.schemas_openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    OpenAIErrorResponse,
    SamplingFields,
)
from fewshot.api.sse import DONE, KEEPALIVE, EventStream, event
from fewshot.api.state import AppState, ServedModel, get_state
from fewshot.engine.types import SamplingParams

router = APIRouter(prefix="/v1", tags=["OpenAI"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 413, 429, 500, 503)
}
_RENAMES = {
    "max_new_tokens": "max_tokens",
    "n": "n",
    "top_n_tokens": "logprobs",
    "inputs": "prompt",
}


def _completion_name(param: str) -> str:
    return _RENAMES.get(param, param)


def _chat_name(param: str) -> str:
    return {"inputs": "messages", "top_n_tokens": "top_logprobs"}.get(
        param, _completion_name(param)
    )


def sampling(body: SamplingFields, state: AppState, stops: list[str], top_n: int) -> SamplingParams:
    """OpenAI fields -> SamplingParams (temperature or top_p 0 means greedy)."""
    s = state.settings
    check_count(body.stop_list(), s.max_stop_sequences, "stop", "stop sequences")
    if top_n > s.max_top_n_tokens:
        raise ValidationFailed.one("logprobs", f"must be <= {s.max_top_n_tokens}")
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = None if body.top_p in (None, 1.0) else body.top_p
    greedy = temperature == 0 or top_p == 0
    return SamplingParams(
        temperature=temperature,
        do_sample=not greedy,
        top_k=body.top_k,
        top_p=None if greedy else top_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=body.stop_list() + stops,
        include_stop=False,
        n=body.n,
        top_n_tokens=top_n,
    )


async def _llm(state: AppState, request: Request, model: ServedModel) -> Any:
    return await state.llm_for(model, wait=bool(header_flag(request.headers, "x-wait-for-model")))


# --- /v1/completions --------------------------------------------------------------------------


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [list(prompt)]
    return list(prompt)


def _completion_jobs(state: AppState, llm: Any, body: CompletionRequest) -> list[Job]:
    prompts = _prompts(body.prompt)
    if not prompts:
        raise ValidationFailed.one("prompt", "must not be empty")
    check_count(prompts, state.settings.max_client_batch_size, "prompt", "prompts per request")
    if body.best_of not in (None, body.n):
        raise ValidationFailed.one("best_of", "only best_of == n is supported")
    template = sampling(body, state, [], body.logprobs or 0)
    template.prompt_logprobs = body.echo and body.logprobs is not None
    limits = Limits.of(state, llm)
    return [
        prepare(
            llm,
            limits,
            prompt,
            dataclasses.replace(template, stop=list(template.stop)),
            16 if body.max_tokens is None else body.max_tokens,
            input_field="prompt" if len(prompts) == 1 else f"prompt.{i}",
            default_new=16,
            rename=_completion_name,
        )
        for i, prompt in enumerate(prompts)
    ]


def _completion_choice(body: CompletionRequest, job: Job, r: Any, index: int) -> CompletionChoice:
    echo = job.prompt if body.echo else ""
    logprobs = None
    if body.logprobs is not None:
        prompt_infos = (r.prefill or []) if body.echo else None
        start = 0 if prompt_infos else len(echo)
        logprobs = fmt.completion_logprobs(
            r.tokens, body.logprobs, start_offset=start, prompt=prompt_infos
        )
    return CompletionChoice(
        text=echo + r.text, index=index, logprobs=logprobs, finish_reason=fmt.finish_reason(r)
    )


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={
        200: event_stream(CompletionResponse, "Chunks when `stream`; then `data: [DONE]`"),
        **_ERRORS,
    },
    summary="Text completion (OpenAI)",
)
async def completions(
    body: CompletionRequest, request: Request, state: AppState = Depends(get_state)
) -> Response:
    model = state.resolve(body.model)
    with RequestScope(state, model, "/v1/completions") as scope:
        llm = await _llm(state, request, model)
        if body.guided_choice is not None:
            return await _guided_choice(state, llm, body, body.guided_choice, model.name)
        jobs = _completion_jobs(state, llm, body)
        if body.stream:
            stream = Stream(state, scope, llm, jobs, rename=_completion_name)
            return EventStream(_completion_events(stream, body, model.name), on_close=stream.close)
        results = await generate(state, model, llm, jobs, rename=_completion_name)
    choices = [
        _completion_choice(body, job, r, i * body.n + j)
        for i, (job, rs) in enumerate(zip(jobs, results, strict=True))
        for j, r in enumerate(rs)
    ]
    out = CompletionResponse(
        **CompletionResponse.envelope(model.name), choices=choices, usage=fmt.usage(results)
    )
    return JSONResponse(out.body())


async def _guided_choice(
    state: AppState, llm: Any, body: CompletionRequest, options: list[str], model: str
) -> JSONResponse:
    """`guided_choice`: the most likely choice per prompt (see fewshot.api.choices)."""
    if body.stream:
        raise choices.no_stream("guided_choice")
    if body.n != 1:
        raise ValidationFailed.one("n", "must be 1 with guided_choice")
    prompts = _prompts(body.prompt)
    if not prompts:
        raise ValidationFailed.one("prompt", "must not be empty")
    check_count(prompts, state.settings.max_client_batch_size, "prompt", "prompts per request")
    texts = [p if isinstance(p, str) else llm.tokenizer.decode(list(p)) for p in prompts]
    chosen = await choices.choose(
        state, llm, texts, options, field="guided_choice", input_field="prompt"
    )
    return JSONResponse(choices.openai_completion(chosen, model))


async def _completion_events(stream: Stream, body: CompletionRequest, model: str) -> Any:
    base = CompletionResponse.envelope(model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    results: list[list[Any]] = [[] for _ in stream.jobs]

    def chunk(choices: list[CompletionChoice], **fields: Any) -> str:
        return event(CompletionResponse(**base, choices=choices, **{**extra, **fields}).body())

    try:
        if body.echo:
            for i, job in enumerate(stream.jobs):
                for j in range(body.n):
                    echo = CompletionChoice(
                        text=job.prompt, index=i * body.n + j, logprobs=None, finish_reason=None
                    )
                    yield chunk([echo])
        async for item in stream.events():
            if item is None:
                yield KEEPALIVE
                continue
            i, ev = item
            logprobs = None
            if body.logprobs is not None and ev.token is not None:
                logprobs = fmt.completion_logprobs([ev.token], body.logprobs)
            finish = None
            if ev.result is not None:
                results[i].append(ev.result)
                finish = fmt.finish_reason(ev.result)
            choice = CompletionChoice(
                text=ev.token.text if ev.token else "",
                index=i * body.n + ev.index,
                logprobs=logprobs,
                finish_reason=finish,
            )
            yield chunk([choice])
        if include_usage:
            yield chunk([], usage=fmt.usage(results))
    except ApiError as exc:
        yield event(error_body(exc, "openai"))
    yield DONE


# --- /v1/chat/completions ---------------------------------------------------------------------


def _chat_job(state: AppState, llm: Any, body: ChatCompletionRequest) -> Job:
    if body.top_logprobs and not body.logprobs:
        raise ValidationFailed.one("top_logprobs", "requires logprobs to be true")
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    text, ids, extra_stops = fmt.chat_prompt(llm, messages)
    top_n = (body.top_logprobs or 0) if body.logprobs else 0
    params = sampling(body, state, extra_stops, top_n)
    requested = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    job = prepare(
        llm,
        Limits.of(state, llm),
        ids,
        params,
        requested,
        input_field="messages",
        default_new=state.settings.chat_max_tokens_default,
        rename=_chat_name,
    )
    job.prompt = text
    return job


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={
        200: event_stream(ChatCompletionChunk, "Chunks when `stream`; then `data: [DONE]`"),
        **_ERRORS,
    },
    summary="Chat completion (OpenAI)",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: AppState = Depends(get_state)
) -> Response:
    model = state.resolve(body.model)
    with RequestScope(state, model, "/v1/chat/completions") as scope:
        llm = await _llm(state, request, model)
        job = _chat_job(state, llm, body)
        if body.stream:
            stream = Stream(state, scope, llm, [job], rename=_chat_name)
            return EventStream(_chat_events(stream, body, model.name), on_close=stream.close)
        results = await generate(state, model, llm, [job], rename=_chat_name)
    k = body.top_logprobs or 0
    choices = [
        ChatChoice(
            index=j,
            message=AssistantMessage(role="assistant", content=r.text),
            logprobs=fmt.chat_logprobs(r.tokens, k) if body.logprobs else None,
            finish_reason=fmt.finish_reason(r),
        )
        for j, r in enumerate(results[0])
    ]
    out = ChatCompletionResponse(
        **ChatCompletionResponse.envelope(model.name), choices=choices, usage=fmt.usage(results)
    )
    return JSONResponse(out.body())


async def _chat_events(stream: Stream, body: ChatCompletionRequest, model: str) -> Any:
    base = ChatCompletionChunk.envelope(model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    k = body.top_logprobs or 0
    results: list[Any] = []

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> str:
        choice = ChatChunkChoice(
            index=index, delta=ChatDelta(**delta), logprobs=logprobs, finish_reason=finish
        )
        return event(ChatCompletionChunk(**base, choices=[choice], **extra).body())

    try:
        for j in range(body.n):
            yield chunk(j, {"role": "assistant", "content": ""})
        async for item in stream.events():
            if item is None:
                yield KEEPALIVE
                continue
            _, ev = item
            text = ev.token.text if ev.token else ""
            if text:
                lp = fmt.chat_logprobs([ev.token], k) if body.logprobs and ev.token else None
                yield chunk(ev.index, {"content": text}, logprobs=lp)
            if ev.result is not None:
                results.append(ev.result)
                yield chunk(ev.index, {}, fmt.finish_reason(ev.result))
        if include_usage:
            usage = fmt.usage([results])
            yield event(ChatCompletionChunk(**base, choices=[], usage=usage).body())
    except ApiError as exc:
        yield event(error_body(exc, "openai"))
    yield DONE


# --- /v1/models -------------------------------------------------------------------------------


@router.get(
    "/models", response_model=ModelList, responses=_ERRORS, summary="Served models (OpenAI)"
)
async def list_models(state: AppState = Depends(get_state)) -> JSONResponse:
    created = int(time.time())
    data = [
        ModelCard(id=m.name, created=created, status=m.status, backend=m.backend)
        for m in state.models
    ]
    return JSONResponse(ModelList(data=data).model_dump())
