"""Text Generation Inference wire format: request and response models (TGI `router/src/lib.rs`).

Fields TGI has but this engine cannot honour (grammar, watermark, typical_p < 1, best_of > 1,
frequency_penalty, adapters) are accepted only at their neutral value, so clients that send the
defaults keep working and anything else is a 422 naming the field. Unknown parameters are
rejected. Ranges are TGI's (router `validation.rs`), every number finite: max_new_tokens >= 1,
temperature >= 0 (0 means greedy here; TGI rejects it), top_k >= 1, top_p (0, 1],
repetition_penalty > 0, truncate >= 1, seed [0, 2**64), top_n_tokens [0, max_top_n_tokens].
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fewshot.api.wire import RequestModel, ResponseModel
from fewshot.toolkit.choices import MAX_CHOICE_CHARS, MAX_CHOICES, check_choices

CHOICES_HELP = (
    "Extension: answer with the most likely of these strings (rank classification), as "
    "generated_text, with every choice's log-probability in details.choices; "
    f"1-{MAX_CHOICES} distinct non-empty strings of at most {MAX_CHOICE_CHARS} characters"
)


def choices_field(value: object) -> object:
    """Pydantic `before` validator body shared by every wire format's choices field."""
    return None if value is None else check_choices(value)  # type: ignore[arg-type]


TgiFinishReason = Literal["length", "eos_token", "stop_sequence"]


class GenerateParameters(RequestModel):
    """Generation parameters of `/generate`, `/generate_stream` and `/`."""

    model_config = ConfigDict(extra="forbid")

    best_of: int | None = Field(None, ge=1, le=1, description="Only 1 (no best-of sampling)")
    decoder_input_details: bool = Field(
        False,
        description="Return the prompt tokens with their logprobs (`details.prefill`); not with streaming",
    )
    details: bool = Field(False, description="Return finish reason, tokens, logprobs and seed")
    do_sample: bool = Field(
        False, description="Sample; also implied by temperature != 1, top_k or top_p < 1"
    )
    frequency_penalty: float | None = Field(None, ge=0, le=0, description="Unsupported: only 0")
    grammar: None = Field(None, description="Unsupported: must be null")
    max_new_tokens: int | None = Field(
        None,
        gt=0,
        description="Tokens to generate; default fills the server default within max_total_tokens",
    )
    repetition_penalty: float | None = Field(
        None, gt=0, description="CTRL-style penalty; 1.0 means none"
    )
    return_full_text: bool = Field(False, description="Prepend the prompt to generated_text")
    seed: int | None = Field(None, ge=0, lt=2**64, description="Random seed for sampling")
    stop: list[str] = Field(
        default_factory=list, description="Stop sequences; the match stays in the text"
    )
    temperature: float | None = Field(None, ge=0, description="Softmax temperature; 0 means greedy")
    top_k: int | None = Field(None, gt=0, description="Keep the k most likely tokens")
    top_n_tokens: int | None = Field(
        None, ge=0, description="Alternatives reported per token (details.top_tokens)"
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass")
    truncate: int | None = Field(
        None, gt=0, description="Keep only the last `truncate` prompt tokens"
    )
    typical_p: float | None = Field(None, ge=1, le=1, description="Unsupported: only 1.0")
    watermark: bool = Field(False, description="Unsupported: only false")
    adapter_id: None = Field(None, description="Unsupported: must be null")
    choices: list[str] | None = Field(None, description=CHOICES_HELP)

    @field_validator("choices", mode="before")
    @classmethod
    def _choices(cls, value: object) -> object:
        return choices_field(value)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("watermark")
    @classmethod
    def _no_watermark(cls, value: bool) -> bool:
        if value:
            raise ValueError("watermarking is not supported")
        return value


class GenerateRequest(RequestModel):
    """`POST /generate` and `/generate_stream`."""

    inputs: str = Field(..., description="The prompt")
    parameters: GenerateParameters | None = Field(
        None, description="Absent: sampling on (TGI's default_parameters)"
    )
    model: str | None = Field(
        None, description="Served model name (extension; default: the first model)"
    )


class CompatGenerateRequest(GenerateRequest):
    """`POST /`: like /generate, with `stream` choosing /generate_stream's answer."""

    stream: bool = Field(False, description="Answer with server-sent events")


class Token(ResponseModel):
    id: int
    text: str
    logprob: float | None = None
    special: bool = False


class PrefillToken(ResponseModel):
    id: int
    text: str
    logprob: float | None = None


class ChoiceLogprob(ResponseModel):
    """One choice of a `choices` request and its log-probability after the prompt."""

    text: str
    logprob: float


class FinishDetails(ResponseModel):
    """What /generate's and /generate_stream's details share."""

    finish_reason: TgiFinishReason
    generated_tokens: int
    seed: int | None = None


class Details(FinishDetails):
    prefill: list[PrefillToken] = Field(default_factory=list)
    tokens: list[Token] = Field(default_factory=list)
    top_tokens: list[list[Token]] | None = None
    choices: list[ChoiceLogprob] | None = Field(
        None, description="Extension, with `choices`: every choice's log-probability"
    )


class GenerateResponse(ResponseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(FinishDetails):
    input_length: int
    prefix_cache_tokens: int | None = Field(
        None, description="Extension: prompt tokens served from the prefix cache"
    )


class StreamResponse(ResponseModel):
    """One `data:` event of /generate_stream; the last carries generated_text (and details)."""

    index: int
    token: Token
    top_tokens: list[Token] | None = None
    generated_text: str | None = None
    details: StreamDetails | None = None


class TokenizeRequest(RequestModel):
    inputs: str
    parameters: GenerateParameters | None = None
    model: str | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    start: int
    stop: int


class ServedModelInfo(BaseModel):
    name: str
    source: str
    status: Literal["loading", "ready", "failed"]
    error: str | None = None
    backend: Literal["native", "fallback"] | None = Field(
        None, description="What runs the model: fewshot's own code or the transformers fallback"
    )
    prefix_sharing: bool | None = Field(
        None,
        description="Requests share the KV of common prompt prefixes (false for the fallback, "
        "whose KV cannot live in the paged pool)",
    )
    dtype: str | None = Field(
        None, description="Weights' dtype once loaded (fp32, bf16 or int8; `auto` resolved)"
    )


class Info(BaseModel):
    """`GET /info`: model and router limits, as TGI reports them."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_device_type: str = "cpu"
    model_pipeline_tag: str | None = "text-generation"
    max_concurrent_requests: int
    max_best_of: int = 1
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int = 1
    max_client_batch_size: int
    router: str = "fewshot"
    version: str
    sha: str | None = None
    docker_label: str | None = None
    models: list[ServedModelInfo]


class ErrorResponse(BaseModel):
    error: str
    error_type: str
