"""Tokenizer: canonical GPT-2 ids, round trips, offsets, token bytes, BOS/EOS, chat templates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fewshot.models.tokenizer import TemplateError, Tokenizer

SAMPLES = [
    "Hello world",
    " The quick brown fox jumps over the lazy dog.",
    "naïve café — 東京 🤖",
    "a<|endoftext|>b",
    "  spaces\n\tand tabs  ",
    "It's 2024!",
]


@pytest.fixture(scope="module")
def gpt2(gpt2_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(gpt2_tokenizer_dir)


def test_gpt2_canonical_ids(gpt2: Tokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" The quick brown fox jumps over the lazy dog.") == [
        383, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13,
    ]  # fmt: skip
    assert gpt2.encode("It's 2024!") == [1026, 338, 48609, 0]
    assert gpt2.encode("a<|endoftext|>b") == [64, 50256, 65]  # special token kept whole
    assert gpt2.vocab_size == 50257


def test_gpt2_matches_transformers(gpt2: Tokenizer, gpt2_tokenizer_dir: Path) -> None:
    from transformers import GPT2TokenizerFast

    hf = GPT2TokenizerFast.from_pretrained(str(gpt2_tokenizer_dir))
    for text in SAMPLES:
        assert gpt2.encode(text) == hf(text)["input_ids"], text


def test_round_trip_and_bytes(gpt2: Tokenizer) -> None:
    for text in SAMPLES:
        ids = gpt2.encode(text)
        assert gpt2.decode(ids) == text
        assert b"".join(gpt2.token_bytes(i) for i in ids) == text.encode("utf-8")
    # a multi-byte character split across tokens: each token's bytes are partial UTF-8
    parts = [gpt2.token_bytes(i) for i in gpt2.encode("🤖")]
    assert len(parts) > 1 and b"".join(parts).decode("utf-8") == "🤖"
    assert gpt2.decode(gpt2.encode("a<|endoftext|>b"), skip_special_tokens=True) == "ab"
    assert gpt2.id_to_token(15496) == "Hello"


def test_offsets(gpt2: Tokenizer) -> None:
    text = "Hello world, naïve"
    spans = gpt2.encode_with_offsets(text)
    assert [i for i, _, _ in spans] == gpt2.encode(text)
    assert spans[0] == (15496, 0, 5)
    assert text[spans[1][1] : spans[1][2]] == " world"
    assert spans[-1][2] == len(text)


def test_special_ids(gpt2: Tokenizer) -> None:
    assert gpt2.eos_token_ids == [50256]
    assert gpt2.eos_token_id == 50256
    assert gpt2.bos_token_id == 50256
    assert gpt2.special_ids == {50256}
    assert gpt2.encode("Hi") == gpt2.encode("Hi", add_special_tokens=False)  # GPT-2 adds no BOS


def _variant(src: Path, dst: Path, **config: object) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.update(config)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def test_bos_added_when_configured(gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(_variant(gpt2_tokenizer_dir, tmp_path / "t", add_bos_token=True))
    assert tok.encode("Hello world") == [50256, 15496, 995]
    assert tok.encode("Hello world", add_special_tokens=False) == [15496, 995]
    assert tok.encode_with_offsets("Hello", add_special_tokens=True)[0] == (50256, 0, 0)
    # a prompt that already starts with BOS (a rendered chat template) gets no second one
    assert tok.encode("<|endoftext|>Hello") == [50256, 15496]


def test_generation_config_eos(gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    d = _variant(gpt2_tokenizer_dir, tmp_path / "t")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [50256, 13]}))
    assert Tokenizer.from_dir(d).eos_token_ids == [50256, 13]


def test_save_and_reload_tokenizer_json(gpt2: Tokenizer, tmp_path: Path) -> None:
    gpt2.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").is_file()
    again = Tokenizer.from_dir(tmp_path / "saved")
    for text in SAMPLES:
        assert again.encode(text) == gpt2.encode(text)
    assert again.eos_token_ids == gpt2.eos_token_ids


CHATML = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_chat_template(gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(_variant(gpt2_tokenizer_dir, tmp_path / "t", chat_template=CHATML))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(msgs, add_generation_prompt=False).endswith("<|im_end|>\n")
    with pytest.raises(TemplateError, match="bad role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}])


def test_chat_template_named_list_and_sandbox(gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    from jinja2.exceptions import SecurityError

    evil = "{{ messages.__class__.__init__.__globals__ }}"
    tok = Tokenizer.from_dir(
        _variant(
            gpt2_tokenizer_dir,
            tmp_path / "t",
            chat_template=[{"name": "default", "template": evil}, {"name": "x", "template": "x"}],
        )
    )
    with pytest.raises(SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_no_chat_template(gpt2: Tokenizer) -> None:
    assert gpt2.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        gpt2.apply_chat_template([{"role": "user", "content": "hi"}])


def test_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.from_dir(tmp_path)


def test_gemma_demo_tokenizer(demo_llm_model) -> None:
    tok = demo_llm_model.tokenizer
    assert tok.bos_token_id == 2
    assert tok.encode("Hello world") == [2, 9259, 1902]  # BOS prepended
    assert tok.encode("Hello world", add_special_tokens=False) == [9259, 1902]
    assert 1 in tok.eos_token_ids and 106 in tok.eos_token_ids  # <eos>, <end_of_turn>
    assert tok.encode("<start_of_turn>", add_special_tokens=False) == [105]
    assert tok.vocab_size == 262144
    for text in ["Hello world", "naïve café — 東京 🤖", "  two  spaces\n\nand 12345"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert chat == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode(chat)
    assert ids[:2] == [2, 105]  # one BOS, not two
