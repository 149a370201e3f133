"""Legacy Hugging Face Inference API wire format (text-generation task), as the seed blog uses it.

Ranges follow the 2022 API docs and api-inference-community's validation (every number finite):
max_new_tokens >= 0, temperature [0, 100], top_k >= 1, top_p (0, 1], repetition_penalty
(0, 100], num_return_sequences [1, 10], max_time (0, 120] s, seed [0, 2**64). Defaults follow the
legacy API: `do_sample` true with `temperature` 1.0 (so `temperature` 0.5 samples), and
`temperature` 0 or `do_sample` false is greedy. `end_sequence` stops generation and is trimmed
from the text (it is the few-shot example separator); `stop` sequences stop and stay in the
text, as in TGI. Unknown parameters are a 400 in transformers' "model_kwargs are not used"
wording, which huggingface_hub understands.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fewshot.api.schemas_tgi import CHOICES_HELP, Details, choices_field
from fewshot.api.wire import RequestModel, ResponseModel


class HFParameters(RequestModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(
        None, ge=0, description="Tokens to generate (default: the server's max_new_tokens_default)"
    )
    temperature: float | None = Field(1.0, ge=0, le=100, description="0 means greedy; default 1.0")
    top_k: int | None = Field(None, ge=1, description="Keep the k most likely tokens")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass")
    repetition_penalty: float | None = Field(None, gt=0, le=100, description="1.0 means none")
    do_sample: bool | None = Field(True, description="Sample (default); false is greedy")
    num_return_sequences: int = Field(1, ge=1, le=10, description="Sequences per input")
    return_full_text: bool = Field(True, description="Prepend the prompt to generated_text")
    max_time: float | None = Field(None, gt=0, le=120, description="Soft time limit in seconds")
    end_sequence: str | None = Field(
        None, min_length=1, description="Stop at this string and trim it"
    )
    stop: list[str] = Field(default_factory=list, description="Stop sequences, kept in the text")
    seed: int | None = Field(None, ge=0, lt=2**64, description="Random seed for sampling")
    details: bool = Field(
        False, description="Add TGI-style details (tokens, logprobs, finish reason)"
    )
    choices: list[str] | None = Field(None, description=CHOICES_HELP)

    @field_validator("choices", mode="before")
    @classmethod
    def _choices(cls, value: object) -> object:
        return choices_field(value)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: object) -> object:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value


class HFOptions(RequestModel):
    model_config = ConfigDict(extra="ignore")

    use_cache: bool = Field(
        True, description="Answer identical deterministic requests from the response cache"
    )
    wait_for_model: bool = Field(False, description="Wait for a loading model instead of a 503")
    use_gpu: bool = Field(False, description="Accepted and ignored (CPU engine)")


class HFRequest(RequestModel):
    """`POST /models/{model_id}`."""

    inputs: str | list[str] = Field(..., description="A prompt, or a list of prompts")
    parameters: HFParameters | None = Field(
        None, description="Generation parameters (null: defaults)"
    )
    options: HFOptions | None = Field(None, description="Caching and loading options")
    stream: bool = Field(False, description="Answer with TGI server-sent events (single input)")


class GeneratedText(ResponseModel):
    generated_text: str
    details: Details | None = None


class HFErrorResponse(BaseModel):
    """`error` is a list of messages for validation errors (400), else a string."""

    error: str | list[str]
    estimated_time: float | None = Field(
        None, description="Seconds until a loading model is ready (503)"
    )
