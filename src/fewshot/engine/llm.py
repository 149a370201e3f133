"""The `LLM` facade: load a model once, then generate, stream, score and submit through it.

Every call, sync or async, goes through the one continuous-batching `Engine` (core.py), so
concurrent callers share batches and the prefix cache:

    llm = LLM.load("EleutherAI/gpt-neo-125M")
    llm.generate("Q: 2+2?\\nA:", max_new_tokens=5, stop="\\n").text
    for ev in llm.stream(prompt, do_sample=True, seed=1): print(ev.token.text, end="")
    llm.loglikelihood([("The sky is", " blue")])   # [(sum logprob, is_greedy)]

Keyword fields are SamplingParams fields (`stop` may be a string; `end_sequence` is an alias of
`stop`); unknown or invalid ones raise ParameterError naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from fewshot.engine.config import EngineConfig
from fewshot.engine.core import Engine
from fewshot.engine.handle import RequestHandle
from fewshot.engine.types import GenerationResult, ParameterError, SamplingParams, StreamEvent
from fewshot.models.base import CausalLM, ModelSpec

T = TypeVar("T")
FIELD_ALIASES = {"end_sequence": "stop"}
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "max_new_tokens": (int,),
    "temperature": (int, float),
    "do_sample": (bool,),
    "top_k": (int, type(None)),
    "top_p": (int, float, type(None)),
    "repetition_penalty": (int, float, type(None)),
    "seed": (int, type(None)),
    "stop": (list,),
    "include_stop": (bool,),
    "max_time": (int, float, type(None)),
    "n": (int,),
    "top_n_tokens": (int,),
    "prompt_logprobs": (bool,),
    "ignore_eos": (bool,),
}


def make_params(params: SamplingParams | None = None, **fields: Any) -> SamplingParams:
    """`params` (or the defaults) updated with keyword `fields`, validated.

    Raises ParameterError for an unknown field (all unknown names listed), a value of the wrong
    type, or an invalid value.
    """
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = sorted(k for k in fields if k not in names and k not in FIELD_ALIASES)
    if unknown:
        raise ParameterError(unknown[0], f"unknown parameter(s): {', '.join(unknown)}")
    updates = {FIELD_ALIASES.get(k, k): v for k, v in fields.items()}
    if "stop" in updates:
        updates["stop"] = _stop_list(updates["stop"])
    for key, value in updates.items():
        _check_type(key, value)
    return dataclasses.replace(params or SamplingParams(), **updates).validate()


def _stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)):
        return list(stop)
    raise ParameterError("stop", "must be a string or a list of strings")


def _check_type(key: str, value: Any) -> None:
    expected = _FIELD_TYPES.get(key)
    if expected is None:
        return
    is_bool = isinstance(value, bool)
    if not isinstance(value, expected) or (is_bool and bool not in expected):
        raise ParameterError(key, f"has the wrong type ({type(value).__name__})")


class LLM:
    """A loaded model and its engine. Thread-safe; close() (or `with`) stops the engine."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Any,
        *,
        name: str,
        source: str | None = None,
        native: bool = True,
        load_seconds: float = 0.0,
        config: EngineConfig | None = None,
        start: bool = True,
        **engine_options: Any,
    ) -> None:
        """`config`, or `engine_options` naming EngineConfig / CacheConfig fields
        (e.g. `max_batch_size=8, kv_cache_mb=64, prefix_caching=False`)."""
        self.name = name
        self.source = source or name
        self.native = native
        self.load_seconds = load_seconds
        self.dtype = _dtype_name(model)  # of the weights: "fp32", "bf16" or "int8"
        self.weight_bytes = model.weight_bytes()
        self.tokenizer = tokenizer
        self.model = model
        config = (config or EngineConfig()).replace(**engine_options)
        self.engine = Engine(model, tokenizer, config, start=start)

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        source: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        config: EngineConfig | None = None,
        cache_dir: str | Path | None = None,
        hf_token: str | None = None,
        name: str | None = None,
        kernel_isa: str = "auto",
        **engine_options: Any,
    ) -> LLM:
        """Load a model (demo name, directory, hub id or GGUF file) and start its engine on
        `device` ("cpu", "cuda", "cuda:N"; "auto": CUDA when torch sees a GPU, else CPU).
        `kernel_isa` caps the native CPU kernels' instruction set (`native.load`)."""
        import torch

        from fewshot.models import native
        from fewshot.models.loading import load_model, resolve_dtype
        from fewshot.models.packed import pack_linears

        target = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch sees no CUDA device")
        if target.type == "cpu":  # the native CPU kernels, built now rather than mid-request
            native.load(Path(cache_dir) / "kernels" if cache_dir is not None else None, kernel_isa)
        dtype = resolve_dtype(dtype, target.type)
        if target.type == "cuda" and dtype == "int8":
            raise ValueError("int8 weights run on the CPU only; use fp32 or bf16 on CUDA")

        def build() -> LLM:
            loaded = load_model(
                source,
                dtype=dtype,
                cache_dir=Path(cache_dir) if cache_dir is not None else None,
                hf_token=hf_token,
            )
            model = loaded.model.to(target)
            compiled = (config or EngineConfig()).replace(**engine_options).compile
            # bf16 CPU weights in oneDNN's layout (a no-op for fp32, int8 and CUDA); not under
            # torch.compile (Inductor packs weights its own way), nor in transformers' modules
            if not compiled and loaded.native:
                pack_linears(model)
            return cls(
                model,
                loaded.tokenizer,
                name=name or loaded.name,
                source=str(loaded.source),
                native=loaded.native,
                load_seconds=loaded.load_seconds,
                config=config,
                **engine_options,
            )

        return _in_passing_thread(build)

    @classmethod
    def from_model(
        cls, model: CausalLM, tokenizer: Any, *, name: str = "model", **options: Any
    ) -> LLM:
        """Wrap an already built model and tokenizer (tests, custom loading)."""
        return cls(model, tokenizer, name=name, **options)

    # -- facts -----------------------------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def max_positions(self) -> int:
        return self.model.spec.max_positions

    # -- tokens ----------------------------------------------------------------------------------

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt (a list of ids is taken as is)."""
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise ParameterError("inputs", "must be a string or a list of token ids")
        return list(prompt)

    def tokenize(self, text: str) -> list[dict[str, Any]]:
        """[{id, text, start, stop}] with character offsets into `text` (TGI /tokenize)."""
        encode_with_offsets = getattr(self.tokenizer, "encode_with_offsets", None)
        if encode_with_offsets is None:
            raise NotImplementedError("this tokenizer gives no character offsets")
        return [
            {"id": int(i), "text": text[start:stop], "start": start, "stop": stop}
            for i, start, stop in encode_with_offsets(text)
        ]

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        """The prompt text for a chat, with the generation prompt added."""
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    # -- generation ------------------------------------------------------------------------------

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, **options: Any
    ) -> RequestHandle:
        """Queue a request; the handle streams StreamEvents (async or sync, see RequestHandle)."""
        return self.engine.submit(prompt_ids, params, **options)

    def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None, **fields: Any
    ) -> GenerationResult:
        """One generation (the first if n > 1), blocking."""
        return self.generate_many(prompt, params, **fields)[0]

    def generate_many(
        self, prompt: str | list[int], params: SamplingParams | None = None, **fields: Any
    ) -> list[GenerationResult]:
        """All `n` return sequences of one prompt (they share its prefill)."""
        handle = self.engine.submit(
            self.encode(prompt), make_params(params, **fields), loop=None, stream=False
        )
        return handle.wait()

    def stream(
        self, prompt: str | list[int], params: SamplingParams | None = None, **fields: Any
    ) -> Iterator[StreamEvent]:
        """Events as tokens are generated; stopping the iteration early cancels the request."""
        handle = self.engine.submit(self.encode(prompt), make_params(params, **fields), loop=None)
        try:
            yield from handle
        finally:
            if not handle.done:
                handle.cancel()

    # -- scoring ---------------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of the continuation's token logprobs, whether greedy decoding would produce it).

        Tokenized as lm-eval's `_encode_pair`: trailing whitespace of the context moves to the
        continuation, the pair is encoded whole and the continuation is what follows the
        context's own encoding. All pairs are submitted at once, so the engine batches them and
        the prefix cache serves shared few-shot contexts.
        """
        params = SamplingParams(max_new_tokens=0, prompt_logprobs=True, top_n_tokens=1)
        jobs = [self._score_job(context, continuation) for context, continuation in requests]
        handles = [
            self.engine.submit(ids, params, logprobs_from=start, loop=None, stream=False)
            if start < len(ids)
            else None
            for ids, start in jobs
        ]
        return [
            _score(h.wait()[0], start) if h else (0.0, True)
            for h, (_, start) in zip(handles, jobs, strict=True)
        ]

    def _score_job(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Prompt ids and the position where the continuation starts (left-truncated to fit)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if context:
            whole = self.encode(context + continuation)
            context_ids = self.encode(context)
        else:
            context_ids = [self._prefix_token()]
            whole = context_ids + self.encode(continuation)
        limit = self.max_positions - 1
        cut = max(0, len(whole) - limit)
        start = len(context_ids) - cut
        if start < 1:
            raise ParameterError("inputs", f"continuation too long for this model ({limit} tokens)")
        return whole[cut:], start

    def _prefix_token(self) -> int:
        bos = self.spec.bos_token_id
        if bos is None:
            bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None:
            bos = next(iter(self.engine.eos_ids), 0)
        return int(bos)

    # -- lifecycle -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The weights' bytes, engine counters, queue sizes and KV pool use (blocks used/free/cached)."""
        return {"model": self.name, "weight_bytes": self.weight_bytes,
                "prefix_sharing": self.engine.kv.prefix_caching, **self.engine.stats()}  # fmt: skip

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _in_passing_thread(fn: Callable[[], T]) -> T:
    """`fn()` run in a thread that ends with it (its exceptions re-raised here).

    libgomp (torch's OpenMP) keeps a pool of worker threads for every thread that ran a
    parallel operator, for as long as that thread lives. Loading a model runs many; on the
    caller's thread (the main thread, or an executor thread that stays alive) that pool would
    outlive the load, and with the engine thread's own pool libgomp then counts more OpenMP
    threads than cores and stops letting idle workers spin between operators. Measured on 2
    cores (GPT-Neo-125M bf16, 2 threads, decode step): 33 ms with the model loaded on the main
    thread, 25 ms loaded in a passing thread (21 ms with the forward on the main thread alone).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="fewshot-load") as pool:
        return pool.submit(fn).result()


def _dtype_name(model: CausalLM) -> str:
    """The weights' dtype name: as `load_model` recorded it, else from the parameters (a model
    built outside `load_model`)."""
    import torch

    loaded = getattr(model, "loaded_dtype", None)
    if isinstance(loaded, str):
        return loaded
    return "bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32"


def _score(result: GenerationResult, start: int) -> tuple[float, bool]:
    infos = (result.prefill or [])[start:]
    total = sum(info.logprob or 0.0 for info in infos)
    greedy = all(not info.top or (info.logprob or 0.0) >= info.top[0].logprob for info in infos)
    return total, greedy
