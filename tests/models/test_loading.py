"""load_model: directories, hub ids (HF cache layout, offline errors), GGUF demos, fallback
(OPT, which has no native class)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest
import torch
from family_helpers import save_with_tokenizer

from fewshot.models.base import CausalLM
from fewshot.models.loading import (
    DTYPES,
    LoadedModel,
    ModelNotFoundError,
    auto_dtype,
    load_model,
    resolve_dtype,
)
from fewshot.models.standalone import Arena, new_cache, run

PROMPT = "Hello world, this is a test of"


def greedy(model: CausalLM, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding over the engine-free forward contract (prefill, then one token a step)."""
    cache = new_cache(model)
    with torch.inference_mode():
        logits = run(model, torch.tensor(ids), [cache], [len(ids)])
        out: list[int] = []
        for _ in range(steps):
            tok = int(logits[0].argmax())
            out.append(tok)
            logits = run(model, torch.tensor([tok]), [cache], [1])
    return out


def hf_greedy(directory: Path, ids: list[int], steps: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.inference_mode():
        out = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


# --------------------------------------------------------------------------- directories


def test_gpt_neo_directory_native(tiny_gpt_neo_dir: Path, tmp_path: Path) -> None:
    from fewshot.models.gpt_neo import GPTNeoForCausalLM

    lm = load_model(str(tiny_gpt_neo_dir), cache_dir=tmp_path)
    assert isinstance(lm, LoadedModel)
    assert isinstance(lm.model, GPTNeoForCausalLM) and lm.native
    assert lm.name == tiny_gpt_neo_dir.name and lm.source == str(tiny_gpt_neo_dir)
    assert lm.model.spec.eos_token_ids == [50256]
    assert lm.load_seconds > 0
    ids = lm.tokenizer.encode(PROMPT)
    assert greedy(lm.model, ids, 12) == hf_greedy(tiny_gpt_neo_dir, ids, 12)


def test_sharded_and_bin_checkpoints(tiny_gpt_neo_dir: Path, tmp_path: Path) -> None:
    from transformers import GPTNeoForCausalLM as HF

    hf = HF.from_pretrained(str(tiny_gpt_neo_dir))
    ids = torch.tensor([15496, 995, 11, 428])
    ref = load_model(str(tiny_gpt_neo_dir)).model
    want = run(ref, ids, [new_cache(ref)], [4], logits="all")

    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file()
    binary = tmp_path / "binary"
    binary.mkdir()
    torch.save(hf.state_dict(), binary / "pytorch_model.bin")
    for d in (sharded, binary):
        shutil.copy(tiny_gpt_neo_dir / "config.json", d / "config.json")
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(tiny_gpt_neo_dir / name, d / name)
        m = load_model(str(d)).model
        got = run(m, ids, [new_cache(m)], [4], logits="all")
        torch.testing.assert_close(got, want)


def test_dtypes(tiny_gpt_neo_dir: Path) -> None:
    lm = load_model(str(tiny_gpt_neo_dir), dtype="bf16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.dtype == "bf16" and resolve_dtype("int8") == "int8"
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(tiny_gpt_neo_dir), dtype="fp8")


def test_auto_dtype_follows_the_hardware() -> None:
    assert auto_dtype("cpu", kernels=True) == "int8"  # AMX, Zen 4 and AVX2 hosts alike
    assert auto_dtype("cpu", kernels=False) == "fp32"  # no C compiler
    assert auto_dtype("cuda") == auto_dtype("cuda:1") == "bf16"
    assert auto_dtype("cpu") in DTYPES  # this machine's own answer is a real dtype


# --------------------------------------------------------------------------- streamed loading


@pytest.fixture(scope="module")
def wide_gpt_neo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GPT-Neo whose Linear weights dominate (small vocabulary, 4 layers of 128)."""
    from fewshot.bench.load_memory import write_random_gpt_neo

    return write_random_gpt_neo(tmp_path_factory.mktemp("wide"), 128, 4, 4, vocab=512)


def _logits(model: CausalLM) -> torch.Tensor:
    ids = torch.arange(0, 500, 7)
    with torch.inference_mode():
        return run(model, ids, [new_cache(model)], [len(ids)], logits="all")


def test_streamed_dtypes_match_converting_after_load(wide_gpt_neo_dir: Path) -> None:
    from fewshot.models.quant import Int8Linear, quantize_model

    fp32 = load_model(str(wide_gpt_neo_dir), dtype="fp32").model
    bf16 = load_model(str(wide_gpt_neo_dir), dtype="bf16").model
    for (name, a), (_, b) in zip(fp32.named_parameters(), bf16.named_parameters(), strict=True):
        assert torch.equal(a.to(torch.bfloat16), b), name
    int8 = load_model(str(wide_gpt_neo_dir), dtype="int8").model
    assert any(isinstance(m, Int8Linear) for m in int8.modules())
    assert not any(p.device.type == "meta" for p in int8.parameters())
    assert int8.lm_head.exact is int8.transformer.wte.weight  # tied head rescores from wte
    assert torch.equal(_logits(int8), _logits(quantize_model(fp32)))


def test_int8_load_never_holds_a_float_copy(wide_gpt_neo_dir: Path, monkeypatch) -> None:
    """Loading int8, the float Linear weights read from the checkpoint are freed one by one as
    they are quantized: at no point are more than two of them alive (watched at the storage,
    so wrapping one in a Parameter would keep it counted)."""
    import weakref

    from fewshot.models.checkpoint import CheckpointReader

    alive: dict[str, int] = {}  # checkpoint key -> bytes, while its storage lives
    peak = [0]
    read = CheckpointReader.read

    def watched_read(self, key, dtype=None):
        t = read(self, key, dtype)
        if ".h." in key and t.dim() == 2:  # a Linear weight inside the blocks
            alive[key] = t.untyped_storage().nbytes()
            weakref.finalize(t.untyped_storage(), alive.pop, key, None)
            peak[0] = max(peak[0], sum(alive.values()))
        return t

    monkeypatch.setattr(CheckpointReader, "read", watched_read)
    model = load_model(str(wide_gpt_neo_dir), dtype="int8").model
    reader = CheckpointReader(wide_gpt_neo_dir)
    sizes = [4 * torch.Size(reader.shape(k)).numel() for k in reader.keys() if ".h." in k]
    assert sum(sizes) > 4 * max(sizes)  # holding them all would fail below
    assert 0 < peak[0] <= 2 * max(sizes), (peak[0], max(sizes))
    assert not alive  # none outlives the load
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 0


def test_unknown_name() -> None:
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load_model("no-such-model")
    with pytest.raises(ModelNotFoundError, match="/definitely/not/here"):
        load_model("/definitely/not/here")


def test_directory_without_weights(tmp_path: Path, tiny_gpt_neo_dir: Path) -> None:
    for name in ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(tiny_gpt_neo_dir / name, tmp_path / name)
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load_model(str(tmp_path))


# --------------------------------------------------------------------------- hub ids


def test_hub_id_not_cached_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        load_model("EleutherAI/gpt-neo-125M", hf_cache_dir=tmp_path / "hf", cache_dir=tmp_path)
    msg = str(err.value)
    assert "EleutherAI/gpt-neo-125M" in msg and "cache" in msg


def test_hub_id_from_local_hf_cache(tiny_gpt_neo_dir: Path, tmp_path: Path) -> None:
    """Files placed in the HF cache layout load with no network."""
    hf_cache = tmp_path / "hf"
    repo = hf_cache / "models--test-org--tiny-neo"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    shutil.copytree(tiny_gpt_neo_dir, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    lm = load_model("test-org/tiny-neo", hf_cache_dir=hf_cache, cache_dir=tmp_path)
    assert lm.native and lm.source == "test-org/tiny-neo"
    ids = lm.tokenizer.encode(PROMPT)
    direct = load_model(str(tiny_gpt_neo_dir)).model
    assert greedy(lm.model, ids, 5) == greedy(direct, ids, 5)
    lm2 = load_model("test-org/tiny-neo", hf_cache_dir=hf_cache, revision=commit)
    assert lm2.native


# --------------------------------------------------------------------------- GPT-2 and fallback


@pytest.fixture(scope="module")
def tiny_opt_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path) -> Path:
    """OPT: an architecture transformers has and fewshot serves only through the fallback."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(
        hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        word_embed_proj_dim=32, max_position_embeddings=128, vocab_size=50257,
        bos_token_id=50256, eos_token_id=50256, pad_token_id=1,
    )  # fmt: skip
    return save_with_tokenizer(
        OPTForCausalLM(cfg), tmp_path_factory.mktemp("opt"), gpt2_tokenizer_dir
    )


def test_gpt2_directory_native(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    from fewshot.models.gpt2 import GPT2LMHeadModel

    lm = load_model(str(tiny_gpt2_dir), cache_dir=tmp_path)
    assert isinstance(lm.model, GPT2LMHeadModel) and lm.native
    assert lm.model.spec.arch == "gpt2" and lm.model.spec.eos_token_ids == [50256]
    ids = lm.tokenizer.encode(PROMPT)
    assert greedy(lm.model, ids, 12) == hf_greedy(tiny_gpt2_dir, ids, 12)


def test_fallback_matches_transformers(
    tiny_opt_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import OPTForCausalLM

    from fewshot.models.fallback import HFFallbackLM

    with caplog.at_level(logging.WARNING, logger="fewshot.models.fallback"):
        lm = load_model(str(tiny_opt_dir))
    assert isinstance(lm.model, HFFallbackLM) and not lm.native
    assert lm.model.spec.arch == "hf_fallback" and lm.model.spec.n_layers == 2
    assert "opt" in caplog.text and "slow" in caplog.text

    hf = OPTForCausalLM.from_pretrained(str(tiny_opt_dir)).eval()
    a = torch.tensor(lm.tokenizer.encode(PROMPT))
    b = torch.tensor(lm.tokenizer.encode("Another, longer prompt for the second sequence"))
    with torch.inference_mode():
        want_a = hf(a[None]).logits[0]
        want_b = hf(b[None]).logits[0]
        m = lm.model
        arena = Arena(m)
        ca, cb = arena.new_cache(), arena.new_cache()
        # prefill a and b together, all logits
        got = run(m, torch.cat([a[:-1], b[:-1]]), [ca, cb], [len(a) - 1, len(b) - 1], "all")
        torch.testing.assert_close(got[: len(a) - 1], want_a[:-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[len(a) - 1 :], want_b[:-1], atol=1e-5, rtol=1e-5)
        # one decode step each, last logits
        got = run(m, torch.stack([a[-1], b[-1]]), [ca, cb], [1, 1])
        torch.testing.assert_close(got, torch.stack([want_a[-1], want_b[-1]]), atol=1e-5, rtol=1e-5)
        assert ca.length == len(a) and cb.length == len(b)
        # a forked sequence (n > 1) continues from a copy of the state: same logits as a
        cc = arena.new_cache()
        m.fork(ca.seq_id, cc.seq_id)
        cc.length = ca.length
        nxt = torch.tensor([int(got[0].argmax())])
        got_a = run(m, nxt, [ca], [1])
        got_c = run(m, nxt, [cc], [1])
        torch.testing.assert_close(got_c, got_a)
        want_next = hf(torch.cat([a, nxt])[None]).logits[0, -1]
        torch.testing.assert_close(got_a[0], want_next, atol=1e-5, rtol=1e-5)
    assert greedy(m, a.tolist(), 8) == hf_greedy(tiny_opt_dir, a.tolist(), 8)


# --------------------------------------------------------------------------- GGUF demo models


def test_demo_model_loads_native(demo_llm_model) -> None:
    from fewshot.models.gemma3 import Gemma3ForCausalLM

    lm = demo_llm_model
    assert isinstance(lm.model, Gemma3ForCausalLM) and lm.native
    spec = lm.model.spec
    assert spec.n_layers == 18 and spec.n_kv_heads == 1 and spec.head_dim == 256
    assert spec.vocab_size == 262144
    assert spec.windows[:6] == [512] * 5 + [None]
    assert 1 in spec.eos_token_ids and 106 in spec.eos_token_ids
    tok = lm.tokenizer
    prompt = "English: cat\nFrench: chat\n###\nEnglish: dog\nFrench:"
    out = tok.decode(greedy(lm.model, tok.encode(prompt), 3))
    assert out.strip().lower().startswith("chien"), out


def _timed_loads(source: str, cache: Path) -> tuple[LoadedModel, float, float]:
    t = time.perf_counter()
    load_model(source, cache_dir=cache)
    first = time.perf_counter() - t
    t = time.perf_counter()
    lm = load_model(source, cache_dir=cache)
    second = time.perf_counter() - t
    print(f"\n{source}: first load {first:.1f}s, cached load {second:.1f}s")
    return lm, first, second


@pytest.mark.slow
def test_gemma_demo_conversion_is_cached(tmp_path: Path) -> None:
    lm, first, second = _timed_loads("gemma-3-270m", tmp_path)
    assert list((tmp_path / "demo").glob("*.gguf"))  # assembled into the cache dir once
    converted = list((tmp_path / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    assert second < first / 2
    assert lm.native and lm.tokenizer.encode("Hi")[0] == 2


@pytest.mark.slow
def test_smollm2_demo(tmp_path: Path) -> None:
    from fewshot.models.llama import LlamaForCausalLM

    lm, first, second = _timed_loads("smollm2-135m", tmp_path)
    assert isinstance(lm.model, LlamaForCausalLM) and lm.native
    assert second < first / 2
    tok = lm.tokenizer
    assert tok.encode("Hello world") == [19556, 905]  # no BOS for this model
    assert tok.bos_token_id == 1 and 2 in tok.eos_token_ids  # <|im_end|>
    assert tok.encode("12345", add_special_tokens=False) == [33, 34, 35, 36, 37]  # digit split
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    prompt = "hot -> cold\nbig -> small\nfast ->"
    assert tok.decode(greedy(lm.model, tok.encode(prompt), 2)).strip().startswith("slow")
