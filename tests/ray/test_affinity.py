"""Prefix affinity without Ray: block keys, the choice of replica, prompt extraction, the
/metrics merge."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from fewshot.serving.affinity import PrefixTable, choose, prefix_keys, rendezvous
from fewshot.serving.forward import prompt_text
from fewshot.serving.replica_metrics import merge_expositions

SHARED = "Translate English to French.\n" * 10  # 290 characters


def test_keys_chain_the_prefix() -> None:
    a = prefix_keys(SHARED + "cheese =>", 64, 16)
    b = prefix_keys(SHARED + "bread =>", 64, 16)
    assert len(a) == len(b) == 4  # complete 64-character blocks only
    assert a[:4] == b[:4]  # the shared 290 characters cover 4 blocks
    assert prefix_keys("x" + SHARED, 64, 16)[0] != a[0]
    assert prefix_keys(SHARED, 64, 2) == a[:2]
    assert prefix_keys("short", 64, 16) == []


def test_owner_of_the_longest_prefix_wins() -> None:
    table = PrefixTable()
    keys = prefix_keys(SHARED + "cheese =>", 64, 16)
    table.record(keys[:2], "a")
    table.record(keys, "b")  # b served the longer prefix
    assert choose(keys, None, {"a": 0, "b": 1}, table, imbalance=4) == (["b", "a"], "held")
    assert table.longest(keys, ["a", "c"]) == (["a"], 2)  # b gone: a still holds 2 blocks
    table.forget("b")
    assert choose(keys, None, {"a": 1, "c": 0}, table, imbalance=4)[0][0] == "a"


def test_uneven_load_spills_to_the_least_loaded() -> None:
    table = PrefixTable()
    keys = prefix_keys(SHARED, 64, 16)
    table.record(keys, "a")
    assert choose(keys, None, {"a": 4, "b": 0}, table, imbalance=4)[0][0] == "a"
    assert choose(keys, None, {"a": 5, "b": 0}, table, imbalance=4) == (["b", "a"], "spilled")
    table.record(keys, "b")  # the hot prefix spilled: both hold it, the less loaded serves
    assert choose(keys, None, {"a": 3, "b": 1, "c": 0}, table, imbalance=4)[0][0] == "b"


def test_new_prefixes_go_to_the_replica_with_fewest() -> None:
    table = PrefixTable()
    loads = {"a": 0, "b": 0, "c": 0}
    placed = []
    for i in range(6):
        keys = prefix_keys(f"task {i}: " + SHARED, 64, 16)
        (first, *_), reason = choose(keys, None, loads, table, imbalance=4)
        assert reason == "new"
        table.record(keys, first)
        placed.append(first)
    assert sorted(placed) == ["a", "a", "b", "b", "c", "c"]


def test_rendezvous_is_stable_when_a_replica_leaves() -> None:
    keys = [prefix_keys(f"{i}" * 64, 64, 1)[0] for i in range(10)]
    before = {k: rendezvous(k, ["a", "b", "c"]) for k in keys}
    after = {k: rendezvous(k, ["a", "b"]) for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != "c")


def test_table_is_bounded() -> None:
    table = PrefixTable(max_entries=8)
    for i in range(5):
        table.record(prefix_keys(f"{i}" * 256, 64, 4), "a")
    assert len(table) == 8 and table.roots("a") == 2


def test_prompt_text_per_route() -> None:
    def body(data: object) -> bytes:
        return json.dumps(data).encode()

    assert prompt_text("/generate", body({"inputs": "abc"})) == "abc"
    assert prompt_text("/models/x", body({"inputs": ["abc", "def"]})) == "abc"
    assert prompt_text("/v1/completions", body({"prompt": [[1, 2], [3]]})) == "1 2"
    chat = body({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert prompt_text("/v1/chat/completions", chat) == "user\nhi\n"
    assert prompt_text("/tasks/sentiment/predict", body({"inputs": "ok"})).startswith("/tasks/")
    assert prompt_text("/generate", b"{not json") == ""
    assert prompt_text("/health", b"") == ""


def test_metrics_merge_labels_every_replica() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    texts = {}
    for replica, n in (("r1", 2), ("r2", 3)):
        registry = CollectorRegistry()
        Counter("x", "Things", ["model"], registry=registry).labels("m").inc(n)
        Gauge("y", "Level", registry=registry).set(n)
        texts[replica] = generate_latest(registry).decode()
    merged = merge_expositions(texts)
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    totals = {s.labels["replica"]: s.value for s in families["x"].samples if s.name == "x_total"}
    assert families["x"].type == "counter" and totals == {"r1": 2.0, "r2": 3.0}
    assert [s.labels for s in families["y"].samples] == [{"replica": "r1"}, {"replica": "r2"}]
