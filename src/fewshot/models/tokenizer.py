"""Tokenizer over the `tokenizers` library: encode/decode, offsets, token bytes, EOS/BOS, chat template.

One class serves every model family. It is built from a directory (`tokenizer.json`, or GPT-2
style `vocab.json` + `merges.txt`, plus `tokenizer_config.json` / `generation_config.json` /
`config.json` for the special ids and the chat template) or, through `gguf_loader`, from a GGUF
file's metadata (which is converted once and cached as such a directory).

Whether BOS is prepended follows the tokenizer: if its post-processor already adds BOS nothing
more is done; otherwise `add_bos_token` (tokenizer_config.json or GGUF metadata) decides.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

_SP_SPACE = "\u2581"


def return_freed_heap() -> None:
    """Hand the heap memory the process has freed back to the OS (glibc's `malloc_trim`; a no-op
    elsewhere). glibc keeps freed small allocations for reuse: parsing Gemma 3's 33 MB
    tokenizer.json peaks 364 MB above where it started and leaves 305 MB resident of which 200 MB
    are free; the weights, loaded next in large blocks of their own, would add to that."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's printable byte alphabet (byte-level BPE spells each byte as one char)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def byte_level_bpe(vocab_file: Path, merges_file: Path) -> Backend:
    """GPT-2 / GPT-Neo tokenizer from `vocab.json` + `merges.txt` (byte-level BPE)."""
    backend = Backend(BPE.from_file(str(vocab_file), str(merges_file)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what generation needs: special ids and the chat template."""

    def __init__(
        self,
        backend: Backend,
        *,
        bos_token: str | None = None,
        eos_tokens: Iterable[str] = (),
        eos_token_ids: Iterable[int] = (),
        add_bos_token: bool | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token_id: int | None = backend.token_to_id(bos_token) if bos_token else None
        self.bos_token = bos_token if self.bos_token_id is not None else None
        ids: list[int] = []
        for tok in eos_tokens:
            tid = backend.token_to_id(tok)
            if tid is not None:
                ids.append(tid)
        ids += list(eos_token_ids)
        self.eos_token_ids: list[int] = list(dict.fromkeys(ids))
        self.eos_token_id: int | None = self.eos_token_ids[0] if self.eos_token_ids else None
        self.chat_template = chat_template
        self.add_bos_token = bool(add_bos_token)
        # Prepend BOS ourselves only when the backend's post-processor does not already.
        with_special = backend.encode("a", add_special_tokens=True).ids
        self._backend_adds_bos = bool(with_special) and with_special[0] == self.bos_token_id
        self._prepend_bos = (
            self.add_bos_token and self.bos_token_id is not None and not self._backend_adds_bos
        )
        decoder = repr(backend.decoder)
        self._byte_level = "ByteLevel" in decoder
        self._sentencepiece = not self._byte_level and _SP_SPACE in decoder
        self._added_ids = frozenset(backend.get_added_tokens_decoder())
        self._template: Any = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load from a model directory (tokenizer.json, or vocab.json + merges.txt)."""
        path = Path(path)
        if (path / "tokenizer.json").is_file():
            backend = Backend.from_file(str(path / "tokenizer.json"))
            return_freed_heap()
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            backend = byte_level_bpe(path / "vocab.json", path / "merges.txt")
        else:
            raise FileNotFoundError(
                f"no tokenizer in {path}: expected tokenizer.json or vocab.json + merges.txt"
            )
        cfg = _read_json(path / "tokenizer_config.json")
        special_map = _read_json(path / "special_tokens_map.json")
        model_cfg = _read_json(path / "config.json")
        gen_cfg = _read_json(path / "generation_config.json")

        # Special tokens listed in the config but unknown to a bare vocab.json tokenizer.
        declared = [
            _token_content(v)
            for v in list(cfg.get("added_tokens_decoder", {}).values())
            + [cfg.get(k) or special_map.get(k) for k in ("bos_token", "eos_token", "unk_token")]
        ]
        known = {t.content for t in backend.get_added_tokens_decoder().values()}
        extra = [t for t in declared if t and t not in known and backend.token_to_id(t) is not None]
        if extra:
            backend.add_special_tokens(
                [AddedToken(t, special=True, normalized=False) for t in extra]
            )

        bos = _token_content(cfg.get("bos_token")) or _token_content(special_map.get("bos_token"))
        eos = _token_content(cfg.get("eos_token")) or _token_content(special_map.get("eos_token"))
        if bos is None and model_cfg.get("bos_token_id") is not None:
            bos = backend.id_to_token(int(model_cfg["bos_token_id"]))
        eos_ids = _as_id_list(gen_cfg.get("eos_token_id")) or _as_id_list(
            model_cfg.get("eos_token_id")
        )
        return cls(
            backend,
            bos_token=bos,
            eos_tokens=[eos] if eos else [],
            eos_token_ids=eos_ids,
            add_bos_token=cfg.get("add_bos_token"),
            chat_template=_read_chat_template(path, cfg),
        )

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json + tokenizer_config.json + generation_config.json (eos ids)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(path / "tokenizer.json"))
        cfg: dict[str, Any] = {
            "bos_token": self.bos_token,
            "eos_token": self.backend.id_to_token(self.eos_token_id)
            if self.eos_token_id is not None
            else None,
            "add_bos_token": self.add_bos_token,
        }
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        gen = {"eos_token_id": self.eos_token_ids, "bos_token_id": self.bos_token_id}
        (path / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")

    # ----------------------------------------------------------------- encode / decode
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Special added tokens, EOS and BOS. Computed once: reading the backend's added tokens
        builds an object per token (Gemma 3 has 6,000), 4-5 ms that every TGI reply paid."""
        ids = {i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}
        ids.update(self.eos_token_ids)
        if self.bos_token_id is not None:
            ids.add(self.bos_token_id)
        return frozenset(ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        return self._finish_ids(text, ids, add_special_tokens)

    def _finish_ids(self, text: str, ids: list[int], add_special_tokens: bool) -> list[int]:
        if add_special_tokens and self._prepend_bos:
            ids = [self.bos_token_id, *ids]  # type: ignore[list-item]
        if (
            add_special_tokens
            and self._starts_with_bos(text)
            and ids[:2] == [self.bos_token_id] * 2
        ):
            ids = ids[1:]  # a rendered chat template already wrote BOS: do not double it
        return ids

    def _starts_with_bos(self, text: str) -> bool:
        return self.bos_token is not None and text.startswith(self.bos_token)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """`encode` of several texts (the backend tokenizes them in parallel)."""
        encs = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [
            self._finish_ids(t, e.ids, add_special_tokens) for t, e in zip(texts, encs, strict=True)
        ]

    def encode_with_offsets(
        self, text: str, add_special_tokens: bool = False
    ) -> list[tuple[int, int, int]]:
        """(id, start, stop) per token; start/stop index characters of `text` (BOS gets 0, 0)."""
        enc = self.backend.encode(text, add_special_tokens=add_special_tokens)
        out = [(i, s, e) for i, (s, e) in zip(enc.ids, enc.offsets, strict=True)]
        if add_special_tokens and self._prepend_bos:
            out.insert(0, (self.bos_token_id, 0, 0))  # type: ignore[arg-type]
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for (byte-level or sentencepiece spelling)."""
        tok = self.backend.id_to_token(token_id)
        if tok is None:
            return b""
        if token_id in self._added_ids:
            return tok.encode("utf-8")
        if self._byte_level:
            table = _byte_decoder()
            if all(c in table for c in tok):
                return bytes(table[c] for c in tok)
            return tok.encode("utf-8")
        if self._sentencepiece:
            if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                return bytes([int(tok[3:5], 16)])
            return tok.replace(_SP_SPACE, " ").encode("utf-8")
        return tok.encode("utf-8")

    # ----------------------------------------------------------------- chat
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render `messages` with the model's Jinja chat template (sandboxed, as HF does)."""
        if not self.chat_template:
            raise ValueError("this model's tokenizer has no chat template")
        if self._template is None:
            self._template = _compile_template(self.chat_template)
        eos = self.backend.id_to_token(self.eos_token_id) if self.eos_token_id is not None else ""
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=eos or "",
            **kwargs,
        )


def _read_chat_template(path: Path, cfg: dict[str, Any]) -> str | None:
    """tokenizer_config.json's chat_template (string or named list), or chat_template.jinja/json."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    tpl = cfg.get("chat_template")
    if tpl is None and (path / "chat_template.json").is_file():
        tpl = _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl}
        tpl = named.get("default") or next(iter(named.values()), None)
    return tpl


class TemplateError(Exception):
    """Raised by a chat template's raise_exception()."""


def _compile_template(source: str) -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)
