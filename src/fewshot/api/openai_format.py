"""Engine results in OpenAI's shapes (as the plain dicts the response models of
schemas_openai.py validate): completion logprobs, chat logprobs, finish reasons, usage, and the
chat prompt (the model's chat template, or a plain fallback format)."""

from __future__ import annotations

from typing import Any

from fewshot.api.errors import ValidationFailed
from fewshot.engine.types import GenerationResult, TokenInfo

# the plain chat format for models without a template; generation stops at the next turn
FALLBACK_ROLES = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
}
FALLBACK_STOPS = ["\nUser:", "\nSystem:"]


def finish_reason(result: GenerationResult) -> str:
    return "length" if result.finish_reason in ("length", "time") else "stop"


def usage(results: list[list[GenerationResult]]) -> dict[str, Any]:
    firsts = [rs[0] for rs in results if rs]
    prompt = sum(r.prompt_tokens for r in firsts)
    completion = sum(r.generated_tokens for rs in results for r in rs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in firsts)},
    }


def _top_dict(info: TokenInfo, k: int) -> dict[str, float]:
    top = {t.text: t.logprob for t in info.top[:k]}
    if info.logprob is not None:
        top.setdefault(info.text, info.logprob)
    return top


def completion_logprobs(
    tokens: list[TokenInfo], k: int, *, start_offset: int = 0, prompt: list[TokenInfo] | None = None
) -> dict[str, Any]:
    """`logprobs` of a completion choice: the echoed prompt tokens (first one None), then the
    generated ones; text offsets count from the start of the returned text."""
    out: dict[str, Any] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    offset = start_offset
    for info in (prompt or []) + tokens:
        out["tokens"].append(info.text)
        out["token_logprobs"].append(info.logprob)
        out["top_logprobs"].append(None if info.logprob is None else _top_dict(info, k))
        out["text_offset"].append(offset)
        offset += len(info.text)
    return out


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(tokens: list[TokenInfo], k: int) -> dict[str, Any]:
    """`logprobs` of a chat choice: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    content = []
    for info in tokens:
        if info.special:
            continue
        item = _entry(info.text, info.logprob if info.logprob is not None else 0.0)
        item["top_logprobs"] = [_entry(t.text, t.logprob) for t in info.top[:k]]
        content.append(item)
    return {"content": content}


def chat_prompt(llm: Any, messages: list[dict[str, str]]) -> tuple[str, list[int], list[str]]:
    """(prompt text, prompt ids, extra stop strings) for a chat.

    The model's chat template renders it when the tokenizer has one (a template that renders
    the BOS text itself is encoded without adding another); otherwise "Role: content" lines
    ending in "Assistant:", stopping at the next user or system turn.
    """
    tokenizer = llm.tokenizer
    if getattr(tokenizer, "chat_template", None):
        try:
            text = llm.apply_chat_template(messages)
        except Exception as exc:  # the template rejected the conversation (e.g. role order)
            raise ValidationFailed.one("messages", f"the chat template failed: {exc}") from exc
        bos = getattr(tokenizer, "bos_token", None)
        add_special = not (bos and text.startswith(bos))
        return text, list(tokenizer.encode(text, add_special_tokens=add_special)), []
    lines = [f"{FALLBACK_ROLES[m['role']]}: {m['content']}" for m in messages]
    text = "\n".join(lines) + "\nAssistant:"
    return text, list(tokenizer.encode(text)), list(FALLBACK_STOPS)
