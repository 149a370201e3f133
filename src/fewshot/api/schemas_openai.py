"""OpenAI wire format: /v1/completions, /v1/chat/completions, /v1/models.

Ranges and defaults follow OpenAI's API reference, every number finite: max_tokens >= 0 (16
by default for completions), temperature [0, 2] and top_p [0, 1] (0 means greedy), n [1, 16],
prompt token ids in [0, vocabulary size), repetition_penalty > 0, logprobs [0, 5],
top_logprobs [0, 20], stop up to the server's max_stop_sequences (trimmed from the text). Unknown fields are rejected as OpenAI does ("Unrecognized request argument").
Fields OpenAI has but this engine does not implement (suffix, logit_bias, tools,
presence/frequency penalties, best_of > n) are accepted only at their neutral value;
`top_k` and `repetition_penalty` are accepted as extensions, as vLLM does.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fewshot import __version__
from fewshot.api.schemas_tgi import choices_field
from fewshot.api.wire import RequestModel, ResponseModel
from fewshot.toolkit.choices import MAX_CHOICE_CHARS, MAX_CHOICES

SYSTEM_FINGERPRINT = f"fewshot-{__version__}"

TokenId = Annotated[int, Field(ge=0, description="A token id of the model's vocabulary")]


def _neutral(value: Any, neutral: Any, what: str) -> Any:
    if value not in (None, neutral):
        raise ValueError(f"{what} is not supported")
    return value


class StreamOptions(RequestModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class SamplingFields(RequestModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Served model name or alias")
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 means greedy")
    top_p: float | None = Field(
        1.0, ge=0, le=1, description="Nucleus sampling mass (0 means greedy)"
    )
    n: int = Field(1, ge=1, le=16, description="Choices per prompt")
    stop: str | list[str] | None = Field(None, description="Stop sequences, trimmed from the text")
    seed: int | None = Field(None, ge=0, lt=2**64, description="Random seed for sampling")
    stream: bool = Field(
        False, description="Answer with server-sent events ending in `data: [DONE]`"
    )
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(0, description="Unsupported: only 0")
    frequency_penalty: float | None = Field(0, description="Unsupported: only 0")
    logit_bias: dict[str, float] | None = Field(None, description="Unsupported: only empty")
    user: str | None = Field(None, description="Accepted and ignored")
    top_k: int | None = Field(None, ge=1, description="Extension: keep the k most likely tokens")
    repetition_penalty: float | None = Field(None, gt=0, description="Extension: 1.0 means none")

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _zero_penalty(cls, value: float | None) -> float | None:
        return _neutral(value, 0, "this penalty")

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(SamplingFields):
    """`POST /v1/completions`."""

    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        ..., description="Prompt(s): text or token ids"
    )
    max_tokens: int | None = Field(16, ge=0, description="Tokens to generate (default 16)")
    logprobs: int | None = Field(
        None, ge=0, le=5, description="Logprobs of the chosen and this many top tokens"
    )
    echo: bool = Field(False, description="Prepend the prompt (with its logprobs when asked)")
    best_of: int | None = Field(None, ge=1, description="Only equal to n (no best-of sampling)")
    suffix: str | None = Field(None, description="Unsupported: must be null")
    guided_choice: list[str] | None = Field(
        None,
        description=(
            "Extension (vLLM's name): the text is the most likely of these strings (rank "
            "classification); logprobs.top_logprobs[0] holds every choice's log-probability. "
            f"1-{MAX_CHOICES} distinct non-empty strings of at most {MAX_CHOICE_CHARS} characters"
        ),
    )

    @field_validator("guided_choice", mode="before")
    @classmethod
    def _choices(cls, value: object) -> object:
        return choices_field(value)

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return _neutral(value, None, "suffix")


class ContentPart(RequestModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(RequestModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"] = "text"


class ChatCompletionRequest(SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(..., min_length=1, description="The conversation")
    max_tokens: int | None = Field(
        None, ge=0, description="Tokens to generate (default: the server's chat default)"
    )
    max_completion_tokens: int | None = Field(None, ge=0, description="Alias of max_tokens")
    logprobs: bool = Field(False, description="Return logprobs of the generated tokens")
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="Alternatives per token (needs logprobs)"
    )
    response_format: ResponseFormat | None = Field(None, description="Only {'type': 'text'}")
    tools: list[dict[str, Any]] | None = Field(None, description="Unsupported: only empty")
    tool_choice: Any = Field(None, description="Unsupported: only null or 'none'")
    parallel_tool_calls: bool | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("tools are not supported")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise ValueError("tool_choice is not supported")
        return value


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = Field(
        None, description="cached_tokens: prompt tokens from the prefix cache"
    )


class Envelope(ResponseModel):
    """The fields every completion / chat response and chunk starts with.

    Routes build a response as `Model(**Model.envelope(name), choices=..., ...)` and send
    `body()`: the fields a route leaves out (a chunk's `usage` without
    `stream_options.include_usage`) stay out of the JSON, as in OpenAI's answers.
    """

    id_prefix: ClassVar[str] = "cmpl"

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None = None

    @classmethod
    def envelope(cls, model: str) -> dict[str, Any]:
        """Fresh id, this model's `object`, the time and the fingerprint (one per response;
        every chunk of a stream repeats its stream's)."""
        return {
            "id": f"{cls.id_prefix}-{uuid.uuid4().hex}",
            "object": cls.model_fields["object"].default,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }


class CompletionResponse(Envelope):
    """A completion, and each chunk of a streamed one (with `usage` last when asked)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoiceBase(BaseModel):
    index: int
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatChoice(ChatChoiceBase):
    message: AssistantMessage


class ChatCompletionResponse(Envelope):
    id_prefix: ClassVar[str] = "chatcmpl"

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(ChatChoiceBase):
    delta: ChatDelta


class ChatCompletionChunk(Envelope):
    """One `data:` event of a streamed chat completion (the stream ends with `data: [DONE]`)."""

    id_prefix: ClassVar[str] = "chatcmpl"

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fewshot"
    status: Literal["loading", "ready", "failed"] | None = Field(
        None, description="Extension: whether the model is loaded"
    )
    backend: Literal["native", "fallback"] | None = Field(
        None, description="What runs the model: fewshot's own code or the transformers fallback"
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail
