"""Where the evaluation gets generations and log-likelihoods: a local `LLM` or a server URL.

* `LocalBackend(llm)`: `llm.generate` (greedy, stop at the separator) and `llm.loglikelihood`.
* `RemoteBackend(client)`: generation through the HF-format endpoint (`Client.generate`);
  log-likelihoods of the continuations of one context through one `/generate` request with
  the `choices` extension (the server ranks them with the same code as the local eval), when
  each continuation is scored exactly as given (it starts with whitespace, or the context ends
  in whitespace). Otherwise, or on a server without `choices`, through `/generate` with
  `decoder_input_details` (the prompt tokens' logprobs; the continuation's tokens are found
  from the end of the prefill by their text). When neither works, rank classification is
  skipped with a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fewshot.toolkit.choices import continuation
from fewshot.toolkit.client import Client, FewShotAPIError


class RankUnavailable(RuntimeError):
    """The backend cannot score continuations (rank classification is skipped)."""


class Backend(Protocol):
    name: str

    def generate(self, prompt: str, max_new_tokens: int, stop: list[str]) -> str: ...

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[float]: ...

    def describe(self) -> dict[str, Any]: ...


class LocalBackend:
    """An in-process `fewshot.LLM`."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.name = llm.name

    def generate(self, prompt: str, max_new_tokens: int, stop: list[str]) -> str:
        result = self.llm.generate(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, stop=stop, include_stop=False
        )
        return result.text

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return [score for score, _ in self.llm.loglikelihood(list(pairs))]

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "model": self.name, "source": getattr(self.llm, "source", None)}


class RemoteBackend:
    """A server speaking the HF Inference API format (and optionally TGI's /generate)."""

    def __init__(self, client: Client, model: str | None = None) -> None:
        self.client = client
        self.model = model or client.model
        self.name = self.model or "remote"
        self._rank_error: str | None = None
        self._choices_ok = True

    def generate(self, prompt: str, max_new_tokens: int, stop: list[str]) -> str:
        return self.client.generate(
            prompt,
            model=self.model,
            options={"use_cache": False},
            max_new_tokens=max_new_tokens,
            temperature=0,
            stop=stop,
        )

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if self._rank_error:
            raise RankUnavailable(self._rank_error)
        out: list[float] = []
        start = 0
        while start < len(pairs):  # runs of pairs sharing a context: one request each
            context = pairs[start][0]
            end = start
            while end < len(pairs) and pairs[end][0] == context:
                end += 1
            conts = [c for _, c in pairs[start:end]]
            out += self._score_choices(context, conts)
            start = end
        return out

    def _score_choices(self, context: str, conts: list[str]) -> list[float]:
        exact = all(continuation(context, c) == c for c in conts) and len(set(conts)) == len(conts)
        if exact and self._choices_ok:
            try:
                scored = self.client.choose(context, conts, model=self.model)["logprobs"]
                return [scored[c] for c in conts]
            except (FewShotAPIError, KeyError) as exc:
                if isinstance(exc, FewShotAPIError) and exc.status not in (400, 404, 405, 422):
                    raise
                self._choices_ok = False  # an older server: use the prefill logprobs
        return [self._score(context, c) for c in conts]

    def _score(self, context: str, continuation: str) -> float:
        try:
            out = self.client.tgi_generate(
                context + continuation,
                model=self.model,
                max_new_tokens=1,
                details=True,
                decoder_input_details=True,
            )
        except FewShotAPIError as exc:
            if exc.status in (404, 405, 422, 400):
                self._rank_error = f"the server's /generate gave no prompt logprobs ({exc})"
                raise RankUnavailable(self._rank_error) from exc
            raise
        prefill = (out.get("details") or {}).get("prefill") or []
        if not prefill:
            self._rank_error = "the server's /generate returned no details.prefill"
            raise RankUnavailable(self._rank_error)
        return continuation_logprob(prefill, continuation)

    def describe(self) -> dict[str, Any]:
        return {"kind": "remote", "model": self.model, "url": self.client.base_url}


def continuation_logprob(prefill: Sequence[dict[str, Any]], continuation: str) -> float:
    """Sum of the logprobs of the last prefill tokens whose texts cover `continuation`."""
    covered = 0
    total = 0.0
    for token in reversed(prefill):
        if covered >= len(continuation):
            break
        covered += len(token.get("text") or "")
        total += float(token.get("logprob") or 0.0)
    return total
