"""The output processor: from chosen tokens to what callers see.

Per sequence it detokenizes incrementally, checks stop conditions (EOS, stop strings, length,
time), holds back text that may be the start of a stop string, and pushes `StreamEvent`s to the
request's handle: one per token while generating, and a last one carrying the
`GenerationResult`. It also turns prompt logprobs into the prompt's `TokenInfo`s. No model, no
scheduling: the core loop calls it with the tokens the runner chose.
"""

from __future__ import annotations

import time
from typing import Any

from fewshot.engine.detok import IncrementalDetokenizer
from fewshot.engine.request import Request, Sequence
from fewshot.engine.sampling import SEED_LIMIT, Choice, Sampler
from fewshot.engine.stopping import StoppingCriteria
from fewshot.engine.types import FinishReason, GenerationResult, StreamEvent, TokenInfo, TopToken
from fewshot.models.base import ModelSpec


class OutputProcessor:
    """Token text, stop checks and event delivery for every sequence of one engine."""

    def __init__(self, tokenizer: Any, spec: ModelSpec) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = _eos_ids(spec, tokenizer)
        self.special_ids = self.eos_ids | set(getattr(tokenizer, "special_ids", None) or ())
        self.max_positions = spec.max_positions
        self._pieces: dict[int, str] = {}
        self.generated_tokens = 0

    # -- sequence state --------------------------------------------------------------------------

    def init_seq(self, request: Request, seq: Sequence) -> None:
        """Give a sequence its sampler (seeded per index), stopping criteria and detokenizer."""
        params = request.params
        seed = (request.seed + seq.index) % SEED_LIMIT
        seq.sampler = Sampler(params, seed)
        seq.stopping = StoppingCriteria(
            params, self.eos_ids, request.admitted or request.arrival, max_length=self.max_positions
        )
        seq.detok = IncrementalDetokenizer(self._decode, request.prompt_ids)

    # -- tokens ----------------------------------------------------------------------------------

    def append(self, seq: Sequence, choice: Choice) -> FinishReason | None:
        """Record a chosen token, stream it, and return the finish reason if it ends `seq`."""
        request = seq.request
        if request.first_token_at is None:
            request.first_token_at = time.monotonic()
        token = choice.token_id
        special = token in self.special_ids
        piece = "" if special else seq.detok.step(token)
        seq.token_ids.append(token)
        self.generated_tokens += 1
        finish = seq.stopping.after_token(token, piece, seq.num_output, seq.num_tokens)
        top = [TopToken(i, self.piece(i), lp) for i, lp in choice.top]
        seq.tokens.append(TokenInfo(token, self.piece(token), choice.logprob, special, top))
        if finish is not None:
            tail = seq.detok.flush() if finish != "stop_sequence" else ""
            seq.stopping.text.feed(tail)
        event_token = TokenInfo(token, self._release(seq, final=finish is not None), choice.logprob,
                                special, top)  # fmt: skip
        if finish is None:
            request.handle._push(StreamEvent(seq.index, event_token))
        else:
            self.finish(seq, finish, event_token)
        return finish

    def _release(self, seq: Sequence, final: bool) -> str:
        """Text that may be streamed now (stop-string prefixes are held back until final)."""
        stop_text = seq.stopping.text
        upto = len(stop_text.text) if final else stop_text.releasable()
        piece = stop_text.text[seq.emitted : upto]
        seq.emitted = max(seq.emitted, upto)
        return piece

    def finish(self, seq: Sequence, finish: FinishReason, token: TokenInfo | None = None) -> None:
        """End a sequence: its last event carries the result."""
        if seq.finish is not None:
            return
        if token is None:  # ended from outside (cancelled, timed out, ...): flush held text
            seq.stopping.text.feed(seq.detok.flush())
        seq.finish = finish
        seq.request.handle._push(StreamEvent(seq.index, token, self.result(seq, finish)))

    def fail(self, request: Request, exc: BaseException) -> None:
        """Fail a whole request: one event carrying the error."""
        for seq in request.seqs:
            seq.finish = seq.finish or "aborted"
        message = f"{type(exc).__name__}: {exc}"
        request.handle._push(StreamEvent(0, None, None, error=message))

    def result(self, seq: Sequence, finish: FinishReason) -> GenerationResult:
        request = seq.request
        now = time.monotonic()
        first = request.first_token_at
        admitted = request.admitted
        return GenerationResult(
            text=seq.stopping.text.text,
            token_ids=seq.output_ids,
            tokens=list(seq.tokens),
            finish_reason=finish,
            prompt_tokens=len(request.prompt_ids),
            cached_tokens=request.cached_tokens,
            seed=None if request.params.greedy else seq.sampler.seed,
            prefill=request.prefill if request.params.prompt_logprobs else None,
            time_to_first_token=(first - admitted) if first and admitted else 0.0,
            total_time=now - request.arrival,
            queue_time=(admitted - request.arrival) if admitted else now - request.arrival,
        )

    # -- prompt logprobs ---------------------------------------------------------------------------

    def prompt_infos(self, request: Request) -> list[TokenInfo]:
        if request.prefill is None:
            request.prefill = [TokenInfo(t, self.piece(t), None) for t in request.prompt_ids]
        return request.prefill

    def record_prompt_logprobs(
        self,
        request: Request,
        start: int,
        chosen: list[float],
        tops: list[list[tuple[int, float]]],
    ) -> None:
        """Logprobs of prompt tokens start+1 .. (row r of the chunk scores token start+1+r)."""
        infos = self.prompt_infos(request)
        for r, (lp, top) in enumerate(zip(chosen, tops, strict=True)):
            pos = start + 1 + r
            if pos < (request.logprobs_from or 0):
                continue
            infos[pos].logprob = lp
            if top:
                infos[pos].top = [TopToken(i, self.piece(i), v) for i, v in top]

    # -- text --------------------------------------------------------------------------------------

    def piece(self, token: int) -> str:
        """A token's own text (special tokens shown), memoised."""
        text = self._pieces.get(token)
        if text is None:
            try:
                text = self.tokenizer.decode([token], skip_special_tokens=False)
            except TypeError:
                text = self.tokenizer.decode([token])
            if len(self._pieces) < 200_000:
                self._pieces[token] = text
        return text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def _eos_ids(spec: ModelSpec, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the model config's and the tokenizer's."""
    ids = set(spec.eos_token_ids or ())
    tok_eos = getattr(tokenizer, "eos_token_ids", None)
    if callable(tok_eos):
        tok_eos = tok_eos()
    ids.update(int(i) for i in (tok_eos or ()))
    return ids
