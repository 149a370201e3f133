"""The int8-vs-fp32 agreement probe of the benchmark, on the tiny GPT-Neo directory."""

from __future__ import annotations

import json

from fewshot.bench.agreement import _prompts, agreement


def test_agreement_on_tiny_gpt_neo(tiny_gpt_neo_dir, tmp_path) -> None:
    prompts = tmp_path / "prompts.json"
    data = {"cold": ["Hello world, this is a test."], "prefix": "Review: good\n###\n"}
    data["single_queries"] = ["Review: bad", "Review: fine"]
    prompts.write_text(json.dumps(data))
    texts = _prompts(prompts, limit=6)
    assert texts == [
        data["cold"][0],
        data["prefix"] + "Review: bad",
        data["prefix"] + "Review: fine",
    ]
    out = agreement(str(tiny_gpt_neo_dir), texts, greedy_tokens=4)
    assert out["prompts"] == 3 and out["greedy_tokens"] == 12
    assert out["positions"] > 10
    # int8 is an approximation: close to, but not necessarily equal to, fp32
    assert 0.6 <= out["teacher_forced_top1"] <= 1.0
    assert 0.0 <= out["greedy_top1"] <= 1.0


def test_default_prompts_mix_few_shot_and_prose() -> None:
    from fewshot.bench.agreement import default_prompts

    texts = default_prompts(lambda t: len(t.split()), 6)
    assert len(texts) == 6 and len(set(texts)) == 6
    assert sum(t.startswith("Request ") for t in texts) == 2  # cold few-shot prompts
    assert sum(t.startswith("Story ") or " Story " in t for t in texts) == 2  # unrelated prose
