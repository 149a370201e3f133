"""fewshot: a self-hosted few-shot inference API and CPU engine for GPT-Neo-style language models.

`from fewshot import LLM` is the Python entry point; `fewshot serve` starts the HTTP API.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LLM", "Client", "FewShotPrompt", "__version__"]


def __getattr__(name: str) -> Any:  # lazy, so `import fewshot` does not import torch
    if name == "LLM":
        from fewshot.engine.llm import LLM

        return LLM
    if name == "Client":
        from fewshot.toolkit.client import Client

        return Client
    if name == "FewShotPrompt":
        from fewshot.toolkit.prompts import FewShotPrompt

        return FewShotPrompt
    raise AttributeError(name)
