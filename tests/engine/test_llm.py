"""The LLM facade: parameters, stop strings on real text, streaming holdback, loglikelihood."""

from __future__ import annotations

import pytest
import torch

from fewshot.engine.llm import LLM, make_params
from fewshot.engine.types import ParameterError
from fewshot.models.standalone import new_cache, run

PROMPT = "The recipe for a good day:"


def test_make_params_fields_aliases_and_errors() -> None:
    params = make_params(max_new_tokens=3, end_sequence="###", temperature=0.5)
    assert params.stop == ["###"] and params.max_new_tokens == 3
    with pytest.raises(ParameterError) as err:
        make_params(max_tokens=3, foo=1)
    assert err.value.param == "foo" and "max_tokens" in str(err.value)
    with pytest.raises(ParameterError) as err:
        make_params(top_p=1.5)
    assert err.value.param == "top_p"
    with pytest.raises(ParameterError) as err:
        make_params(temperature="hot")
    assert err.value.param == "temperature"


def _boundary_stop(llm) -> tuple[str, int]:
    """A stop string made of the end of one generated token and the start of the next."""
    free = llm.generate(PROMPT, max_new_tokens=20, ignore_eos=True)
    for i in range(3, len(free.tokens) - 1):
        a, b = free.tokens[i].text, free.tokens[i + 1].text
        if len(a) >= 2 and len(b) >= 2 and a.isascii() and b.isascii():
            stop = a[-2:] + b[:2]
            start = free.text.find(stop)
            if start == len("".join(t.text for t in free.tokens[:i])) + len(a) - 2:
                return stop, start
    raise AssertionError(f"no two ascii tokens to span in {free.text!r}: change PROMPT")


@pytest.mark.parametrize("include_stop", [True, False])
def test_stop_string_spanning_tokens(llm, include_stop: bool) -> None:
    stop, start = _boundary_stop(llm)
    free = llm.generate(PROMPT, max_new_tokens=20, ignore_eos=True).text
    result = llm.generate(PROMPT, max_new_tokens=20, stop=[stop], include_stop=include_stop)
    assert result.finish_reason == "stop_sequence"
    end = start + len(stop) if include_stop else start
    assert result.text == free[:end]
    events = list(llm.stream(PROMPT, max_new_tokens=20, stop=stop, include_stop=include_stop))
    streamed = "".join(ev.token.text for ev in events if ev.token and not ev.token.special)
    assert streamed == result.text  # nothing of the stop string leaked before the match
    assert events[-1].result is not None and events[-1].result.text == result.text


def test_streamed_text_adds_up_to_the_result(llm) -> None:
    events = list(llm.stream(PROMPT, max_new_tokens=25, do_sample=True, seed=5, stop=["\n\n"]))
    text = "".join(ev.token.text for ev in events if ev.token and not ev.token.special)
    assert text == events[-1].result.text
    assert "\ufffd" not in "".join(ev.token.text for ev in events[:-1] if ev.token)


def _manual_loglikelihood(neo, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor(ctx + cont)
    with torch.inference_mode():
        logits = run(neo, ids, [new_cache(neo)], [len(ids)], logits="all")
    logprobs = torch.log_softmax(logits, -1)[len(ctx) - 1 : -1]  # [len(cont), V]
    target = torch.tensor(cont)
    total = float(logprobs[torch.arange(len(cont)), target].sum())
    return total, bool((logprobs.argmax(-1) == target).all())


def test_loglikelihood_matches_a_full_forward(llm, neo, gpt2_tokenizer) -> None:
    pairs = [("The capital of France is", " Paris"), ("Answer: ", "yes it is"), ("", "Hello")]
    got = llm.loglikelihood(pairs)
    tok = gpt2_tokenizer
    expected = [
        _manual_loglikelihood(neo, tok.encode("The capital of France is"), tok.encode(" Paris")),
        _manual_loglikelihood(neo, tok.encode("Answer:"), tok.encode(" yes it is")),
        _manual_loglikelihood(neo, [tok.eos_token_id], tok.encode("Hello")),
    ]
    for (lp, greedy), (exp_lp, exp_greedy) in zip(got, expected, strict=True):
        assert lp == pytest.approx(exp_lp, abs=1e-3)
        assert greedy == exp_greedy


def test_loglikelihood_greedy_continuation(llm) -> None:
    context = "One two three"
    greedy = llm.generate(context, max_new_tokens=3, ignore_eos=True)
    ((lp, is_greedy),) = llm.loglikelihood([(context, greedy.text)])
    assert is_greedy
    assert lp == pytest.approx(sum(t.logprob for t in greedy.tokens), abs=1e-3)


def test_loglikelihood_reuses_a_shared_context(llm, neo, gpt2_tokenizer) -> None:
    shots = "Q: what is one plus one?\nA: two\n" * 12
    pairs = [(shots + "Q: and two?\nA:", c) for c in (" four", " five", " six")]
    llm.loglikelihood(pairs[:1])  # the shared context enters the cache
    before = llm.stats()["prefix_cache"]["hit_tokens"]
    cached = llm.loglikelihood(pairs)
    assert llm.stats()["prefix_cache"]["hit_tokens"] - before >= 3 * 16 * 10
    with LLM.from_model(neo, gpt2_tokenizer, threads=1, prefix_caching=False) as plain:
        uncached = plain.loglikelihood(pairs)
    for (lp_c, greedy_c), (lp_u, greedy_u) in zip(cached, uncached, strict=True):
        assert lp_c == pytest.approx(lp_u, abs=1e-4) and greedy_c == greedy_u


def test_tokenize_offsets(llm) -> None:
    text = "Hello wörld"
    toks = llm.tokenize(text)
    assert [t["id"] for t in toks] == llm.tokenizer.encode(text)
    assert "".join(t["text"] for t in toks) == text
