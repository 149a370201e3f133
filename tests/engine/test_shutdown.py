"""A program that uses `LLM` from several threads and exits without close() exits cleanly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import threading
    import torch
    from transformers import GPTNeoConfig
    from fewshot.engine.llm import LLM
    from fewshot.models.gpt_neo import GPTNeoForCausalLM

    class Tok:
        def decode(self, ids, **kw):
            return "".join(chr(97 + i % 26) for i in ids)

    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                       attention_types=[[["global", "local"], 1]], window_size=16,
                       max_position_embeddings=256, eos_token_id=299, bos_token_id=299)
    llm = LLM.from_model(GPTNeoForCausalLM(cfg).eval(), Tok(), threads=2, kv_cache_mb=4)

    def work(i):
        for _ in range(3):
            llm.generate(list(range(1 + i, 30 + i)), max_new_tokens=4, ignore_eos=True)
        llm.submit(list(range(5)), llm_params, loop=None)  # still running at exit

    from fewshot.engine.types import SamplingParams
    llm_params = SamplingParams(max_new_tokens=200, ignore_eos=True)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("done", flush=True)
    """
)


def test_exit_without_close_from_several_threads_is_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done" in proc.stdout
    assert "terminate called" not in proc.stderr
