"""Incremental detokenization: turn tokens into text one at a time, never emitting broken UTF-8.

Byte-level BPE (GPT-2, GPT-Neo) splits multi-byte characters over several tokens, and
SentencePiece decoders change a piece's leading space depending on what precedes it. So a
token's text is not `decode([token])`: it is the difference between decoding a short window that
ends with the token and the same window without it. As TGI's `Model.decode_token`:
- `prefix_offset .. read_offset` is the window already shown, `read_offset ..` the new tokens;
- while the new text ends with U+FFFD (an incomplete character) nothing is emitted and the
  offsets stay, so the bytes are decoded again once the character is complete.
The window starts on the last few prompt tokens, so the first generated piece gets the leading
space it has in context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # prompt tokens kept as context for the first pieces (as TGI)


class IncrementalDetokenizer:
    """Decodes one sequence's generated tokens incrementally with `decode(ids) -> str`."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        context_ids: Sequence[int] = (),
        context: int = CONTEXT_TOKENS,
    ) -> None:
        self.decode = decode
        self.ids: list[int] = list(context_ids[-context:]) if context > 0 else []
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def step(self, token_id: int) -> str:
        """Add a token; return the text that became printable ("" while a character is split)."""
        self.ids.append(token_id)
        prefix_text = self.decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self.decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self._advance()
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Text still held back (an incomplete character at the very end), as decode gives it."""
        if self.read_offset >= len(self.ids):
            return ""
        prefix_text = self.decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self.decode(self.ids[self.prefix_offset :])
        self._advance()
        return new_text[len(prefix_text) :] if new_text.startswith(prefix_text) else new_text

    def _advance(self) -> None:
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        # keep only the window still needed (prefix_offset onwards)
        if self.prefix_offset > 64:
            del self.ids[: self.prefix_offset]
            self.read_offset -= self.prefix_offset
            self.prefix_offset = 0
