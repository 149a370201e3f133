"""Benchmark prompts: a few-shot prefix of a target token length, distinct queries, and
unrelated prompts, all generated from a seed and measured with the model's own tokenizer."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

SEPARATOR = "\n###\n"
STOP = "###"
INSTRUCTION = "Classify the sentiment of each product review as positive or negative."

_PRODUCTS = (
    "blender, backpack, phone case, desk lamp, coffee grinder, rain jacket, keyboard, "
    "water bottle, tent, headphones, frying pan, office chair, kettle, running shoes, "
    "toaster, monitor, umbrella, camera bag, bike light, scarf, printer, vacuum cleaner, "
    "wristwatch, sleeping bag, board game, garden hose, air fryer, bookshelf, yoga mat, "
    "electric toothbrush, hair dryer, suitcase"
).split(", ")
_GOOD = (
    "works exactly as described, feels solid and well made, was easy to set up, "
    "exceeded my expectations, is worth every penny, arrived early and well packed, "
    "has held up great after months of use, is quiet and efficient, "
    "looks even better in person, made my mornings easier, "
    "is comfortable to use all day, was a thoughtful gift"
).split(", ")
_BAD = (
    "broke after two days, feels cheap and flimsy, was missing parts, "
    "stopped working within a week, is far too loud, arrived scratched and dented, "
    "does not match the photos, was a waste of money, overheats constantly, "
    "is uncomfortable after ten minutes, leaks every time I use it, has a terrible smell"
).split(", ")
_DETAILS = (
    "I bought it for my daughter., We use it every weekend., I ordered the blue one., "
    "It replaced an older model., I took it on a long trip., My partner picked it out., "
    "I compared three brands first., It was on sale last month., I use it at work., "
    "The instructions were short., Shipping took four days., I read many reviews first."
).split(", ")
_WORDS = (
    "river, engine, garden, history, market, planet, winter, library, signal, harbor, "
    "forest, machine, village, theory, ocean, kitchen, mountain, bridge, orchestra, "
    "desert, festival, laboratory, island, railway, museum, storm, algorithm, castle, "
    "factory, meadow, satellite, painter, volcano, glacier"
).split(", ")
_VERBS = (
    "changed, described, followed, measured, surprised, crossed, explained, built, "
    "watched, repaired, announced, carried, discovered, painted, studied"
).split(", ")
_ADJS = (
    "ancient, quiet, bright, remote, curious, famous, narrow, crowded, frozen, hidden, "
    "modern, broken, golden, gentle, restless, distant, forgotten"
).split(", ")

CountTokens = Callable[[str], int]


def _review(rng: random.Random) -> tuple[str, str]:
    positive = rng.random() < 0.5
    phrase = rng.choice(_GOOD if positive else _BAD)
    text = f"The {rng.choice(_PRODUCTS)} {phrase}. {rng.choice(_DETAILS)}"
    return text, "positive" if positive else "negative"


def _example(text: str, label: str | None) -> str:
    answer = f" {label}" if label else ""
    return f"Review: {text}\nSentiment:{answer}"


def few_shot_prefix(count_tokens: CountTokens, target_tokens: int, seed: int = 0) -> str:
    """Instruction plus as many labelled examples as fit in about `target_tokens` tokens.

    Ends with the separator, so a query is appended as `prefix + query(...)`.
    """
    rng = random.Random(seed)
    parts = [INSTRUCTION]
    while True:
        text, label = _review(rng)
        candidate = SEPARATOR.join([*parts, _example(text, label)]) + SEPARATOR
        if count_tokens(candidate) > target_tokens and len(parts) > 1:
            break
        parts.append(_example(text, label))
    return SEPARATOR.join(parts) + SEPARATOR


def queries(n: int, seed: int = 1) -> list[str]:
    """`n` distinct final queries (unlabelled reviews) to append to a few-shot prefix."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text, _ = _review(rng)
        text = f"{text} Order number {rng.randrange(10_000, 99_999)}."
        if text not in seen:
            seen.add(text)
            out.append(_example(text, None))
    return out


def unrelated_prompts(
    count_tokens: CountTokens, n: int, target_tokens: int, seed: int = 2
) -> list[str]:
    """`n` prompts that share no prefix (each opens differently), about `target_tokens` long."""
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        sentences = [f"Story {i + 1} begins in a {rng.choice(_ADJS)} {rng.choice(_WORDS)}."]
        while count_tokens(" ".join(sentences)) < target_tokens:
            sentences.append(
                f"The {rng.choice(_ADJS)} {rng.choice(_WORDS)} {rng.choice(_VERBS)} "
                f"the {rng.choice(_WORDS)} near the {rng.choice(_ADJS)} {rng.choice(_WORDS)}."
            )
        rng.shuffle(sentences)  # so the prompts do not even share their first words
        out.append(" ".join(sentences))
    return out


def sized_prompts(
    count_tokens: CountTokens, n: int, target_tokens: int, seed: int = 200
) -> list[str]:
    """`n` unrelated prompts of `target_tokens` tokens (at most; a word or two less where a
    word does not split evenly), each opening with its own number so no prefix cache serves
    any part of one from another."""
    rng = random.Random(seed + target_tokens)
    out: list[str] = []
    for i in range(n):
        words = f"Document {seed + i} of the archive.".split()
        estimate = count_tokens(" ".join(words))
        while estimate < target_tokens:  # sentences add up to about the joined count
            sentence = (
                f"The {rng.choice(_ADJS)} {rng.choice(_WORDS)} {rng.choice(_VERBS)} "
                f"the {rng.choice(_WORDS)} near the {rng.choice(_ADJS)} {rng.choice(_WORDS)}."
            )
            words += sentence.split()
            estimate += count_tokens(" " + sentence)
        while len(words) > 1 and count_tokens(" ".join(words)) > target_tokens:
            words.pop()
        out.append(" ".join(words))
    return out


def cold_prompts(
    count_tokens: CountTokens, n: int, target_tokens: int, seed: int = 100
) -> list[str]:
    """`n` few-shot prompts of about `target_tokens` tokens that differ from their first token
    (a request id line), so no prefix cache can serve any part of them."""
    qs = queries(n, seed=seed)
    out = []
    for i, q in enumerate(qs):
        head = f"Request {seed + i}.\n"
        budget = target_tokens - count_tokens(head) - count_tokens(q)
        out.append(head + few_shot_prefix(count_tokens, budget, seed=seed + i) + q)
    return out


@dataclass
class PromptSet:
    """Everything the workloads send for one model."""

    cold: list[str]  # distinct ~350-token few-shot prompts (single-request workload)
    prefix: str  # the shared ~300-token few-shot prefix
    single_queries: list[str]  # queries on the prefix for the cached time to first token
    serving_queries: list[str]  # queries of the serving workload
    unrelated: list[str]  # prompts of the throughput workload
    tokens: dict[str, int]  # measured lengths, for the report


def _mean_tokens(count_tokens: CountTokens, texts: list[str]) -> int:
    sample = texts[:20]
    return round(sum(count_tokens(t) for t in sample) / len(sample)) if sample else 0


def build_prompt_set(
    count_tokens: CountTokens,
    needed: dict[str, int],
    single_tokens: int,
    prefix_tokens: int,
    unrelated_tokens: int,
) -> PromptSet:
    """Prompts for one tokenizer (`needed` as from `workloads.prompts_needed`), with lengths."""
    qs = queries(needed["single_queries"] + needed["serving_queries"])
    single_q, serving_q = qs[: needed["single_queries"]], qs[needed["single_queries"] :]
    cold = cold_prompts(count_tokens, needed["cold"], single_tokens)
    prefix = few_shot_prefix(count_tokens, prefix_tokens, seed=0)
    unrelated = unrelated_prompts(count_tokens, needed["unrelated"], unrelated_tokens)
    tokens = {
        "single_prompt": _mean_tokens(count_tokens, cold),
        "prefix": count_tokens(prefix),
        "query": _mean_tokens(count_tokens, serving_q),
        "unrelated_prompt": _mean_tokens(count_tokens, unrelated),
    }
    return PromptSet(cold, prefix, single_q, serving_q, unrelated, tokens)


def token_counter(tokenizer_json: str) -> CountTokens:
    """A token counter over a `tokenizer.json` (no special tokens added)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
