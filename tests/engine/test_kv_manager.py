"""The KV block manager and the scheduler without a model: exact block ids, hits, copy-on-write,
eviction order, preemption and admission under a tiny pool."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fewshot.engine.config import EngineConfig
from fewshot.engine.kv_manager import KVCacheManager, block_hash
from fewshot.engine.request import Request, SeqStatus, Sequence
from fewshot.engine.scheduler import Scheduler
from fewshot.engine.types import SamplingParams

BS = 4


def make_request(tokens: list[int], n: int = 1, rid: int = 0, **params) -> Request:
    req = Request(rid, list(tokens), SamplingParams(n=n, **params), 0, None, 0.0)
    req.seqs = [Sequence(rid * 10 + i, req, i, list(tokens), len(tokens)) for i in range(n)]
    return req


def seq_of(tokens: list[int], rid: int = 0) -> Sequence:
    return make_request(tokens, rid=rid).seqs[0]


def computed(kv: KVCacheManager, seq: Sequence, upto: int | None = None) -> None:
    """Pretend the forward ran: everything (or `upto` tokens) computed, blocks sealed."""
    seq.num_computed = seq.num_tokens if upto is None else upto
    kv.seal(seq)


def test_allocation_takes_blocks_in_order_and_frees_tail_first() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = seq_of(list(range(10)))  # 3 blocks
    assert kv.allocate(a, max_cached=9) == [0, 1, 2]
    assert a.block_table == [0, 1, 2] and a.num_computed == 0
    computed(kv, a)
    assert len(a.block_hashes) == 2 and kv.num_cached == 2  # the partial third is not sealed
    kv.free_seq(a)
    # unsealed block 2 is reused first; then untouched 3..7; sealed tail (1) before head (0)
    assert kv.eviction_order() == [2, 3, 4, 5, 6, 7, 1, 0]
    assert kv.stats()["blocks_used"] == 0 and kv.stats()["blocks_cached"] == 2
    # distinct blocks ever handed out (the pool's resident pages): the reused block counts once
    assert kv.stats()["blocks_touched"] == 3
    assert kv.allocate(seq_of(list(range(20, 26)), rid=1), max_cached=5) == [2, 3]
    assert kv.stats()["blocks_touched"] == 4


def test_prefix_hit_is_a_reference_not_a_copy() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = seq_of(list(range(10)))
    kv.allocate(a, max_cached=9)
    computed(kv, a)
    b = seq_of(list(range(8)) + [50, 51, 52], rid=1)
    assert kv.allocate(b, max_cached=10) == [3]
    assert b.block_table == [0, 1, 3] and b.num_computed == 8
    assert [kv.blocks[i].ref_count for i in (0, 1, 2, 3)] == [2, 2, 1, 1]
    assert kv.counters.hits == 1 and kv.counters.hit_tokens == 8
    # the hit is capped: a request that needs logits from position 5 reuses one whole block,
    # and the next block's first token by a copy (its own block cannot be shared)
    c = seq_of(list(range(10)), rid=2)
    assert kv.allocate(c, max_cached=5) == [4, 5]
    assert c.block_table == [0, 4, 5] and c.num_computed == 5
    assert kv.take_copies() == [(1, 4, 1)] and kv.take_copies() == []


def test_a_partial_hit_copies_the_longest_continuation() -> None:
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    prefix = [1, 2, 3, 4, 5, 6]  # ends mid-block: block 1 holds 5, 6 and a query's tokens
    a = seq_of(prefix + [7, 8, 9])
    kv.allocate(a, max_cached=8)
    computed(kv, a)
    b = seq_of(prefix + [5, 8, 9], rid=1)
    assert kv.allocate(b, max_cached=8) == [3, 4]
    assert b.block_table == [0, 3, 4] and b.num_computed == 6  # 5, 6 from a's block 1
    assert kv.take_copies() == [(1, 3, 2)]
    computed(kv, b)
    assert kv.children[a.block_hashes[0]] == {1: None, 3: None}
    # b's block shares 3 tokens with c, a's 2: b's is copied
    c = seq_of(prefix + [5, 0, 0, 0], rid=2)
    assert kv.allocate(c, max_cached=9) == [5, 6]
    assert c.num_computed == 7 and kv.take_copies() == [(3, 5, 3)]
    # a whole match stays a reference
    d = seq_of(prefix + [5, 8, 0, 0], rid=3)
    assert kv.allocate(d, max_cached=9) == [7]
    assert d.block_table == [0, 3, 7] and d.num_computed == 8 and kv.take_copies() == []
    e = seq_of(prefix + [7, 0, 0, 0], rid=4)
    assert kv.allocate(e, max_cached=6) == [8, 9]  # capped at 6 tokens: 5, 6; a tie goes
    assert e.num_computed == 6 and kv.counters.partial_hits == 3  # to the most recent block
    # the source stays referenced until the runner has its copy, then goes back as it was
    assert kv.blocks[3].ref_count == 3  # b, d and the pending copy
    assert kv.take_copies() == [(3, 8, 2)] and kv.blocks[3].ref_count == 2
    assert kv.stats()["hit_tokens"] == 6 + 7 + 8 + 6


def test_a_partial_hit_source_is_not_evicted_by_its_own_allocation() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    a = seq_of([1, 2, 3, 4, 5, 6, 7, 8, 9])
    kv.allocate(a, max_cached=8)
    computed(kv, a)
    kv.free_seq(a)  # all free; 0 and 1 sealed, 1 evicted before 0
    b = seq_of([1, 2, 3, 4, 5, 6, 0, 0, 0, 0], rid=1)  # needs 2 new blocks: 2 and 3, not 1
    assert kv.allocate(b, max_cached=9) == [2, 3]
    assert kv.take_copies() == [(1, 2, 2)] and b.num_computed == 6
    assert kv.eviction_order() == [1]
    kv.free_seq(b)
    # with no block to spare for the source, the tokens are recomputed instead
    c = seq_of([1, 2, 3, 4, 5, 6] + [9] * 7, rid=2)  # 3 blocks after the hit on 0: 3 free
    assert kv.allocate(c, max_cached=12) == [2, 3, 1]
    assert c.num_computed == 4 and kv.take_copies() == []
    assert 1 not in kv.children.get(kv.blocks[0].hash, {})  # evicted: no longer a candidate


def test_a_hit_on_a_freed_block_takes_it_off_the_free_queue() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    a = seq_of(list(range(8)) + [9])
    kv.allocate(a, max_cached=8)
    computed(kv, a)
    kv.free_seq(a)
    assert kv.eviction_order() == [2, 3, 1, 0]
    b = seq_of(list(range(8)) + [7, 7], rid=1)
    kv.allocate(b, max_cached=9)
    assert b.block_table == [0, 1, 2] and kv.eviction_order() == [3]


def test_lru_eviction_drops_unreferenced_blocks_only() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    a = seq_of([1] * 8 + [2])
    kv.allocate(a, max_cached=8)
    computed(kv, a)
    kv.free_seq(a)  # blocks 0, 1 cached and free; 2 free
    live = seq_of([5] * 5, rid=1)
    assert kv.allocate(live, max_cached=4) == [2, 3]
    other = seq_of([6] * 5, rid=2)  # needs 2 blocks: evicts the cached tail (1), then 0
    assert kv.allocate(other, max_cached=4) == [1, 0]
    assert kv.counters.evictions == 2 and kv.num_cached == 0
    assert kv.allocate(seq_of([7] * 2, rid=3), max_cached=1) is None  # nothing unreferenced
    assert kv.lookup([1] * 8, 8) == []


def test_hash_collision_never_serves_other_tokens() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    a = seq_of([1, 2, 3, 4, 5])
    kv.allocate(a, max_cached=4)
    computed(kv, a)
    block = kv.blocks[a.block_table[0]]
    block.tokens = (9, 9, 9, 9)  # as if another prefix had the same hash
    assert kv.lookup([1, 2, 3, 4, 5], 4) == []


def test_block_digests_name_the_whole_prefix() -> None:
    """Blocks are named by a cryptographic digest chained over the prefix (not Python's hash of
    a tuple, which a client could make collide with another client's blocks)."""
    first = block_hash(None, (1, 2, 3, 4))
    assert isinstance(first, bytes) and len(first) == 32
    assert block_hash(None, (1, 2, 3, 4)) == first  # stable
    assert block_hash(first, (5, 6, 7, 8)) != block_hash(
        block_hash(None, (0, 2, 3, 4)), (5, 6, 7, 8)
    )
    assert block_hash(None, (1, 2, 3, 5)) != first
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    a = seq_of([1, 2, 3, 4, 5, 6, 7, 8, 9])
    kv.allocate(a, max_cached=8)
    computed(kv, a)
    assert a.block_hashes == [first, block_hash(first, (5, 6, 7, 8))]


def test_fork_shares_full_blocks_and_copies_the_partial_one() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    req = make_request(list(range(10)), n=3)
    parent, c1, c2 = req.seqs
    kv.allocate(parent, max_cached=9)
    computed(kv, parent)
    assert kv.fork(parent, c1) == [(2, 3, 2)]  # the 2 computed positions of block 2
    assert kv.fork(parent, c2) == [(2, 4, 2)]
    assert c1.block_table == [0, 1, 3] and c2.block_table == [0, 1, 4]
    assert [kv.blocks[i].ref_count for i in range(5)] == [3, 3, 1, 1, 1]
    for s in req.seqs:
        kv.free_seq(s)
    assert kv.stats()["blocks_used"] == 0
    # a prompt that ends on a block boundary shares everything
    req = make_request(list(range(8)), n=2)
    kv.allocate(req.seqs[0], max_cached=7)
    computed(kv, req.seqs[0])
    assert kv.fork(req.seqs[0], req.seqs[1]) == []
    assert req.seqs[1].block_table == req.seqs[0].block_table


# -- scheduler ---------------------------------------------------------------------------------


def scheduler(num_blocks: int, **config) -> Scheduler:
    return Scheduler(EngineConfig(**config), KVCacheManager(num_blocks, BS))


def run_step(sched: Scheduler, token: int = 7):
    """schedule + pretend forward + append a token to every sampled sequence."""
    out = sched.schedule()
    sched.update_from_output(out)
    for chunk in out.chunks:
        if chunk.sample:
            chunk.seq.token_ids.append(token)
    return out


def test_chunked_prefill_then_decode_with_exact_blocks() -> None:
    sched = scheduler(16, prefill_chunk=6, idle_prefill_tokens=6)
    req = make_request(list(range(10)))
    sched.add(req)
    out = run_step(sched)
    assert [(c.start, c.num_tokens, c.sample) for c in out.chunks] == [(0, 6, False)]
    assert out.new_blocks == [0, 1, 2]
    out = run_step(sched)
    assert [(c.start, c.num_tokens, c.sample) for c in out.chunks] == [(6, 4, True)]
    out = run_step(sched)  # decode of token 10 at position 10
    assert [(c.start, c.num_tokens) for c in out.chunks] == [(10, 1)] and out.new_blocks == []
    run_step(sched)
    out = run_step(sched)  # position 12 opens block 3
    assert out.new_blocks == [3] and req.seqs[0].block_table == [0, 1, 2, 3]


def test_admission_waits_for_blocks_and_resumes() -> None:
    sched = scheduler(4)
    a, b = make_request([1] * 12, rid=0), make_request([2] * 12, rid=1)
    sched.add(a)
    sched.add(b)
    out = run_step(sched)
    assert [c.seq.request for c in out.chunks] == [a]  # b's 3 blocks do not fit next to a's
    assert [s.request for s in sched.waiting] == [b]
    sched.finish(a.seqs[0])
    out = run_step(sched)
    assert [c.seq.request for c in out.chunks] == [b]


def test_preemption_frees_the_youngest_and_recomputes_it_later() -> None:
    sched = scheduler(4)
    old, young = make_request([1] * 7, rid=0), make_request([2] * 7, rid=1)
    sched.add(old)
    sched.add(young)
    run_step(sched)  # both prefilled: 2 blocks each, pool full; each has 8 tokens now
    out = run_step(sched)  # decodes at position 7 fit in the second blocks
    assert len(out.chunks) == 2
    out = run_step(sched)  # position 8 needs a third block: the youngest is preempted
    assert out.preempted == [young.seqs[0]] and [c.seq for c in out.chunks] == [old.seqs[0]]
    assert young.seqs[0].status is SeqStatus.WAITING and young.seqs[0].block_table == []
    assert sched.waiting[0] is young.seqs[0] and sched.preemptions == 1
    sched.finish(old.seqs[0])
    out = run_step(sched)  # recomputed: prompt + its 2 generated tokens, blocks from the cache
    (chunk,) = out.chunks
    assert chunk.seq is young.seqs[0] and chunk.sample and chunk.end == 9


def test_a_sequence_that_outgrows_the_whole_pool_is_reported() -> None:
    sched = scheduler(2)
    req = make_request([1] * 7)
    sched.add(req)
    run_step(sched)
    run_step(sched)
    out = sched.schedule()
    assert out.exhausted == [req.seqs[0]] and out.chunks == []


def test_a_request_waits_for_a_prefix_being_prefilled() -> None:
    sched = scheduler(32, prefill_chunk=4, idle_prefill_tokens=4)
    shared = list(range(12))
    first, second = make_request(shared + [90], rid=0), make_request(shared + [91], rid=1)
    sched.add(first)
    sched.add(second)
    for _ in range(3):
        out = run_step(sched)
        assert all(c.seq.request is first for c in out.chunks)
    out = run_step(sched)  # first's prompt is in the cache: second hits 12 tokens
    second_chunk = [c for c in out.chunks if c.seq.request is second]
    assert second_chunk and second_chunk[0].start == 12 and second.cached_tokens == 12


def test_batch_limit_counts_every_return_sequence() -> None:
    sched = scheduler(32, max_batch_size=3)
    a, b = make_request([1] * 5, n=2, rid=0), make_request([2] * 5, n=2, rid=1)
    sched.add(a)
    sched.add(b)
    out = run_step(sched)
    assert {c.seq.request for c in out.chunks} == {a}
    assert sched.fork(a.seqs[0]) == [(1, 2, 1)]
    assert sched.running_slots() == 2 and sched.waiting[0].request is b


def test_drafts_only_while_few_sequences_decode() -> None:
    """Prompt-lookup drafts only while at most speculative_max_batch sequences decode."""
    sched = scheduler(64, speculative_tokens=2, speculative_max_batch=1)
    a = make_request([1, 2, 3, 1, 2], rid=0, max_new_tokens=8)
    b = make_request([4, 5, 6, 4, 5], rid=1, max_new_tokens=8)
    sched.add(a)
    sched.add(b)
    run_step(sched, token=3)  # both prefilled; a ends "1 2 3 1 2 3", alone it would draft
    out = run_step(sched, token=1)
    assert [(c.seq.request, c.drafts) for c in out.chunks] == [(a, []), (b, [])]
    sched.finish(b.seqs[0])
    out = sched.schedule()  # a alone, ending "3 1 2 3 1"
    assert [(c.seq.request, c.drafts) for c in out.chunks] == [(a, [2, 3])]


def test_scheduler_and_kv_manager_never_import_torch() -> None:
    code = (
        "import sys; import fewshot.engine.scheduler, fewshot.engine.kv_manager; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("bad", [0, -1])
def test_manager_rejects_empty_pools(bad: int) -> None:
    with pytest.raises(ValueError):
        KVCacheManager(num_blocks=bad, block_size=BS)
