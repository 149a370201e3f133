"""Prompt-lookup speculative decoding: draft tokens by n-gram match, verify them in one forward.

Few-shot outputs copy their format from the examples (`\\n###\\n`, labels, field names), so the
tokens that follow the last few generated tokens have often appeared earlier in the prompt.
`propose` finds the most recent earlier occurrence of the sequence's last n tokens (n from
`max_ngram` down to `min_ngram`) and drafts the tokens that followed it (as in "prompt lookup
decoding" and vLLM's n-gram proposer). Pure Python over token ids: the scheduler calls it.

The runner then feeds the pending token and the k drafts as one chunk and gets k + 1 logits
rows; `ModelRunner.verify` accepts drafts from the left:
- greedy: a draft is accepted while it equals the argmax of its row; the first row that
  disagrees (or the row after the last draft) gives the next token. The output is therefore
  token-identical to plain greedy decoding.
- sampling: draft x at row i is accepted with probability p_i(x) (p_i the row's warped
  distribution); on rejection the token is drawn from p_i with x removed and renormalised, the
  exact rejection-sampling rule for a deterministic (point-mass) proposal, so every emitted
  token keeps the distribution it has without speculation.
"""

from __future__ import annotations

from collections.abc import Sequence


def propose(
    token_ids: Sequence[int], k: int, *, max_ngram: int = 3, min_ngram: int = 1
) -> list[int]:
    """Up to k draft tokens continuing `token_ids`, from its latest earlier n-gram match."""
    n_tokens = len(token_ids)
    if k <= 0 or n_tokens < min_ngram + 1:
        return []
    for n in range(min(max_ngram, n_tokens - 1), min_ngram - 1, -1):
        tail = list(token_ids[n_tokens - n :])
        first = tail[0]
        # latest start i < n_tokens - n with token_ids[i:i+n] == tail
        for i in range(n_tokens - n - 1, -1, -1):
            if token_ids[i] == first and list(token_ids[i : i + n]) == tail:
                follow = list(token_ids[i + n : i + n + k])
                if follow:
                    return follow
                break
    return []
