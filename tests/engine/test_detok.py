"""Incremental detokenization with GPT-2's byte-level BPE: multi-byte characters never break."""

from __future__ import annotations

from fewshot.engine.detok import REPLACEMENT, IncrementalDetokenizer

TEXT = "Crème brûlée, 日本語 and 🎉🎉 naïve façade — ok"


def test_pieces_are_whole_characters_and_add_up(gpt2_tokenizer) -> None:
    ids = gpt2_tokenizer.encode(TEXT)
    detok = IncrementalDetokenizer(gpt2_tokenizer.decode)
    pieces = [detok.step(t) for t in ids]
    assert all(REPLACEMENT not in p for p in pieces)
    assert "" in pieces  # some tokens carry only part of a character
    assert "".join(pieces) + detok.flush() == TEXT


def test_context_tokens_are_not_emitted(gpt2_tokenizer) -> None:
    prompt = gpt2_tokenizer.encode("Say: 日")
    generated = gpt2_tokenizer.encode(" 本語 🎉 done")
    detok = IncrementalDetokenizer(gpt2_tokenizer.decode, prompt)
    text = "".join(detok.step(t) for t in generated) + detok.flush()
    assert text == gpt2_tokenizer.decode(generated)


def test_flush_returns_an_incomplete_tail(gpt2_tokenizer) -> None:
    ids = gpt2_tokenizer.encode("a🎉")
    detok = IncrementalDetokenizer(gpt2_tokenizer.decode)
    shown = "".join(detok.step(t) for t in ids[:-1])
    assert shown == "a"
    assert detok.flush().endswith(REPLACEMENT)  # the truncated emoji, as decode() shows it


def test_long_generation_keeps_a_small_window(gpt2_tokenizer) -> None:
    ids = gpt2_tokenizer.encode("word " * 300)
    detok = IncrementalDetokenizer(gpt2_tokenizer.decode)
    assert "".join(detok.step(t) for t in ids) == "word " * 300
    assert len(detok.ids) < 100
