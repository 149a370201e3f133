"""The model runner: the only engine module that touches torch and the model.

It owns the paged `KVPool` (sized from the cache config), turns a `SchedulerOutput` into one
forward (input ids, positions, attention metadata, the rows whose logits are wanted; on CUDA a
step of decodes and short chunks replays a captured graph, `StepGraphs`), and
chooses tokens: plain greedy rows all at once (`greedy_choices`: the argmax and its logprob,
row by row, so each row's result is what it would be alone), the others through their own
`Sampler`. Prompt logprobs come from the same forward's logits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from fewshot.engine.config import EngineConfig
from fewshot.engine.request import Sequence
from fewshot.engine.sampling import (
    Choice,
    argmax,
    batch_logprobs,
    greedy_choices,
    top_alternatives,
)
from fewshot.engine.scheduler import ScheduledChunk
from fewshot.models.attention import run_eagerly_under_compile
from fewshot.models.attention_metadata import AttentionMetadata
from fewshot.models.base import CausalLM
from fewshot.models.kv_pool import KVPool
from fewshot.models.quant import auto_kv_dtype
from fewshot.models.step_graphs import StepGraphs

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _stacked(rows: list[torch.Tensor]) -> torch.Tensor:
    """Rows [V] as one [R, V] tensor: a view when they are consecutive rows of one tensor (a
    decode step's logits), else a copy."""
    first = rows[0]
    size = first.numel() * first.element_size()
    if first.is_contiguous() and all(
        r.is_contiguous()
        and r.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and r.data_ptr() == first.data_ptr() + i * size
        for i, r in enumerate(rows)
    ):
        return first.as_strided((len(rows), first.numel()), (first.numel(), 1))
    return torch.stack(rows)


@dataclass
class ChunkLogits:
    """Logits of one chunk: `last` [V] when it samples, `rows` [t, V] with prompt logits."""

    last: torch.Tensor | None
    rows: torch.Tensor | None


def available_memory(device: torch.device | None = None) -> int:
    """Bytes of memory available to new allocations on `device`: a CUDA device's free memory,
    else the host's (Linux MemAvailable; else 4 GiB)."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def pool_blocks(model: CausalLM, config: EngineConfig, dtype: torch.dtype) -> int:
    """Blocks in the pool: `kv_cache_mb`, or a quarter of the device's free memory capped at what
    `max_batch_size` sequences of `max_model_len` tokens need."""
    s, cc = model.spec, config.cache
    per_block = KVPool.block_bytes(s.n_layers, s.n_kv_heads, s.head_dim, cc.block_size, dtype)
    if cc.kv_cache_mb is not None:
        return max(1, int(cc.kv_cache_mb * 2**20) // per_block)
    max_len = config.max_model_len or min(s.max_positions, 4096)
    want = config.max_batch_size * -(-max_len // cc.block_size)
    return max(1, min(want, available_memory(model.device) // 4 // per_block))


class ModelRunner:
    """Runs scheduled chunks through the model over the paged pool, and samples."""

    def __init__(self, model: CausalLM, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.forward: Any = model
        if config.compile:
            run_eagerly_under_compile()
            self.forward = torch.compile(model, dynamic=True)
        self.device = model.device
        cc = config.cache
        dtype = auto_kv_dtype(model) if cc.kv_dtype in (None, "auto") else _DTYPES[cc.kv_dtype]
        self.num_blocks = pool_blocks(model, config, dtype)
        self.pool: KVPool | None = None
        self.block_bytes = 0  # of the pool, per block (K and V, every layer)
        self.graphs: StepGraphs | None = None
        if model.paged:
            s = model.spec
            on_cuda = self.device.type == "cuda" and not config.compile
            graphs = on_cuda if config.cuda_graphs is None else config.cuda_graphs
            # with graphs, one more block than the KV manager hands out: the padding's scratch
            scratch = 1 if graphs else 0
            self.pool = KVPool(
                s.n_layers, s.n_kv_heads, s.head_dim, self.num_blocks + scratch, cc.block_size,
                dtype, self.device,
            )  # fmt: skip
            self.block_bytes = self.pool.nbytes // self.pool.num_blocks
            if graphs:
                self.pool.zero_blocks([self.num_blocks])
                self.graphs = StepGraphs(
                    model, self.pool, self.num_blocks, config.max_batch_size, capture=on_cuda
                )
            log.info(
                "KV pool: %d blocks of %d tokens, %s, %.0f MiB",
                self.num_blocks, cc.block_size, dtype, self.pool.nbytes / 2**20,
            )  # fmt: skip

    def warm_up(self) -> float:
        """Compile (when enabled) for the shapes serving meets: a prefill, a decode and a
        batched decode, over blocks that are cleared afterwards. Returns the seconds spent."""
        if not self.config.compile or self.pool is None or self.num_blocks < 4:
            return 0.0
        start = time.perf_counter()
        log.info("compiling the model (first start only; later starts reuse the cache)...")
        bs = self.pool.block_size
        n = min(bs + 4, self.model.spec.max_positions - 3)
        tables = [[0, 1], [2, 3]]
        for starts, counts in (([0], [n]), ([n], [1]), ([n + 1, n], [1, 1])):
            attn = AttentionMetadata.build(
                self.pool, tables[: len(starts)], starts, counts, device=self.device
            )
            total = sum(counts)
            positions = [p for s, c in zip(starts, counts, strict=True) for p in range(s, s + c)]
            rows = torch.tensor(attn.query_start[1:], device=self.device) - 1
            with torch.inference_mode():
                self.forward(
                    torch.zeros(total, dtype=torch.long, device=self.device),
                    torch.tensor(positions, dtype=torch.long, device=self.device),
                    attn,
                    rows,
                )
        self.pool.zero_blocks(range(4))
        seconds = time.perf_counter() - start
        log.info("model compiled in %.1f s", seconds)
        return seconds

    # -- the forward -----------------------------------------------------------------------------

    def clear_blocks(self, new_blocks: list[int]) -> None:
        """Zero blocks just handed out, so attention never reads stale or uninitialised K/V."""
        if self.pool is not None:
            self.pool.zero_blocks(new_blocks)

    def execute(self, chunks: list[ScheduledChunk]) -> list[ChunkLogits]:
        """One forward for all chunks; their logits, in order. Writes their K/V to the pool."""
        limit = self.model.spec.max_positions
        if any(c.end > limit for c in chunks):
            raise ValueError(f"{self.model.spec.arch} cannot go past {limit} positions")
        if self.graphs is not None and all(not c.prompt_logits and not c.drafts for c in chunks):
            # decodes and short chunks, each wanting its last token's logits at most
            replayed = self.graphs.run(
                [c.tokens for c in chunks],
                [c.start for c in chunks],
                [c.seq.block_table for c in chunks],
            )
            if replayed is not None:
                host = replayed.cpu()
                return [
                    ChunkLogits(host[i] if c.sample else None, None) for i, c in enumerate(chunks)
                ]
        ids: list[int] = []
        positions: list[int] = []
        rows: list[int] = []
        for chunk in chunks:
            base = len(ids)
            ids.extend(chunk.tokens)
            positions.extend(range(chunk.start, chunk.end))
            if chunk.prompt_logits or chunk.drafts:
                rows.extend(range(base, base + chunk.num_tokens))
            elif chunk.sample:
                rows.append(base + chunk.num_tokens - 1)
        attn = AttentionMetadata.build(
            self.pool,
            [c.seq.block_table for c in chunks],
            [c.start for c in chunks],
            [c.num_tokens for c in chunks],
            block_size=self.config.cache.block_size,
            seq_ids=[c.seq.seq_id for c in chunks],
            device=self.device,
        )
        # rows may be empty (prefill chunks with nothing to read): their K/V is still written
        logits = self.forward(
            torch.tensor(ids, dtype=torch.long, device=self.device),
            torch.tensor(positions, dtype=torch.long, device=self.device),
            attn,
            torch.tensor(rows, dtype=torch.long, device=self.device),
        ).cpu()
        out: list[ChunkLogits] = []
        at = 0
        for chunk in chunks:
            if chunk.prompt_logits or chunk.drafts:
                part = logits[at : at + chunk.num_tokens]
                at += chunk.num_tokens
                out.append(ChunkLogits(part[-1] if chunk.sample else None, part))
            elif chunk.sample:
                out.append(ChunkLogits(logits[at], None))
                at += 1
            else:
                out.append(ChunkLogits(None, None))
        return out

    def copy_blocks(self, copies: list[tuple[int, int, int]]) -> None:
        """(src, dst, positions) copies between pool blocks, before the forward that reads them."""
        if self.pool is not None:
            self.pool.copy_blocks(copies)

    def fork_state(self, parent: Sequence, child: Sequence) -> None:
        """For a model with its own per-sequence state (fallback): copy it to the child."""
        if not self.model.paged:
            self.model.fork(parent.seq_id, child.seq_id)

    def release(self, seq: Sequence) -> None:
        if not self.model.paged:
            self.model.release(seq.seq_id)

    # -- choosing tokens -------------------------------------------------------------------------

    def sample(self, items: list[tuple[Sequence, torch.Tensor]]) -> list[Choice]:
        """The next token of each sequence from its logits row [V]."""
        choices: list[Choice | None] = [None] * len(items)
        greedy = [i for i, (seq, _) in enumerate(items) if seq.sampler.plain_greedy]
        if greedy:
            rows = [items[i][1] for i in greedy]
            for i, choice in zip(greedy, greedy_choices(_stacked(rows)), strict=True):
                choices[i] = choice
        for i, (seq, row) in enumerate(items):
            if choices[i] is None:
                context = seq.token_ids if seq.sampler.needs_context else ()
                choices[i] = seq.sampler.choose(row, context)
        return choices  # type: ignore[return-value]

    @staticmethod
    def verify(seq: Sequence, rows: torch.Tensor, drafts: list[int]) -> tuple[list[Choice], int]:
        """Accept drafts from the left (see speculation.py); the tokens to emit and how many
        drafts were accepted. rows [k + 1, V]: logits after the fed token and each draft."""
        sampler = seq.sampler
        if sampler.plain_greedy:  # the choices plain decoding makes, logprobs included
            picks = greedy_choices(rows[: len(drafts) + 1])
            accepted = next(
                (i for i, d in enumerate(drafts) if picks[i].token_id != d), len(drafts)
            )
            return picks[: accepted + 1], accepted
        logprobs = batch_logprobs(rows)  # reported logprobs are unwarped
        context = list(seq.token_ids)
        out: list[Choice] = []
        for i in range(len(drafts) + 1):
            processed = sampler.process(rows[i], context)
            draft = drafts[i] if i < len(drafts) else None
            if sampler.generator is None:  # greedy: identical to plain decoding
                token = int(argmax(processed))
                accepted = token == draft
            else:  # rejection sampling against a point-mass proposal: p(x), else p without x
                probs = torch.softmax(processed.float(), dim=-1)
                u = float(torch.rand((), generator=sampler.generator)) if draft is not None else 1
                accepted = draft is not None and u < float(probs[draft])
                if accepted:
                    token = int(draft)  # type: ignore[arg-type]
                else:
                    if draft is not None and float(probs[draft]) < 1.0:
                        probs = probs.clone()
                        probs[draft] = 0.0
                    token = int(torch.multinomial(probs, 1, generator=sampler.generator))
            top = top_alternatives(logprobs[i], sampler.params.top_n_tokens)
            out.append(Choice(token, float(logprobs[i, token]), top))
            context.append(token)
            if not accepted:
                return out, i
        return out, len(drafts)

    @staticmethod
    def prompt_logprobs(
        logits: torch.Tensor, targets: list[int], top_n: int
    ) -> tuple[list[float], list[list[tuple[int, float]]]]:
        """Logprob of each target under logits [t, V] (row r scores targets[r]), and the top_n
        alternatives of each row."""
        n = len(targets)
        logprobs = batch_logprobs(logits[:n])
        chosen = logprobs.gather(1, torch.tensor(targets)[:, None])[:, 0].tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        if top_n > 0:
            top = torch.topk(logprobs, top_n, dim=-1)
            tops = [
                list(zip(i, v, strict=True))
                for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            ]
        return chosen, tops
