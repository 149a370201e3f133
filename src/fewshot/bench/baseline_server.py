"""The baseline: a plain FastAPI server calling a transformers `pipeline("text-generation")`.

This is what one deploys out of the box: fp32, default generation settings, one pipeline call
per request, stop strings handled by transformers itself (`stop_strings`, which needs the
tokenizer passed to `generate`). It speaks the same wire formats the benchmark sends to our
server: the Hugging Face Inference API route `POST /models/{id}` and TGI's `POST /generate`
(with `details`, so the client can count generated tokens). Calls are serialised with a lock:
concurrent pipeline calls on the same cores only slow each other down.

Run: python -m fewshot.bench.baseline_server --model DIR --port PORT --threads N [--device cuda]
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field


class HFRequest(BaseModel):
    """Body of the Hugging Face Inference API text-generation route (and of TGI /generate)."""

    inputs: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)


def _stop_list(params: dict[str, Any]) -> list[str]:
    stops: list[str] = []
    for key in ("stop", "stop_sequences", "end_sequence"):
        value = params.get(key)
        if isinstance(value, str):
            stops.append(value)
        elif isinstance(value, list):
            stops.extend(str(s) for s in value)
    return [s for s in stops if s]


class PipelineGenerator:
    """One transformers text-generation pipeline, called under a lock."""

    def __init__(
        self, model_dir: str, threads: int, serialize: bool = True, device: str = "cpu"
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, local_files_only=True
        ).to(device)
        self.pipe = pipeline(
            "text-generation", model=model, tokenizer=self.tokenizer, device=torch.device(device)
        )
        self.lock: threading.Lock | None = threading.Lock() if serialize else None

    def _kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": int(params.get("max_new_tokens", 20))}
        temperature = params.get("temperature")
        do_sample = bool(params.get("do_sample", temperature not in (None, 0, 0.0)))
        kwargs["do_sample"] = do_sample
        if do_sample:
            for key in ("temperature", "top_k", "top_p"):
                if params.get(key) is not None:
                    kwargs[key] = params[key]
        stops = _stop_list(params)
        if stops:
            kwargs["stop_strings"] = stops
            kwargs["tokenizer"] = self.tokenizer
        return kwargs

    def generate(self, prompt: str, params: dict[str, Any]) -> tuple[str, int, str]:
        """Generated text (without the prompt), generated token count, finish reason."""
        kwargs = self._kwargs(params)
        prompt_len = len(self.tokenizer(prompt)["input_ids"])
        if self.lock is None:
            out = self.pipe(prompt, return_tensors=True, **kwargs)
        else:
            with self.lock:
                out = self.pipe(prompt, return_tensors=True, **kwargs)
        ids = list(out[0]["generated_token_ids"])[prompt_len:]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        stops = kwargs.get("stop_strings", [])
        if any(s in text for s in stops):
            reason = "stop_sequence"
        elif ids and ids[-1] in _eos_ids(self.pipe.model):
            reason = "eos_token"
        else:
            reason = "length"
        return text, len(ids), reason


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {int(eos)}


def create_app(generator: PipelineGenerator) -> FastAPI:
    """The baseline's routes: GET /health, POST /models/{id}, POST /generate."""
    app = FastAPI(title="transformers pipeline baseline")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/models/{model_id:path}")
    def hf_route(model_id: str, req: HFRequest) -> list[dict[str, str]]:
        try:
            text, _, _ = generator.generate(req.inputs, req.parameters)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        if req.parameters.get("return_full_text", True):
            text = req.inputs + text
        return [{"generated_text": text}]

    @app.post("/generate")
    def tgi_generate(req: HFRequest) -> dict[str, Any]:
        try:
            text, count, reason = generator.generate(req.inputs, req.parameters)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        out: dict[str, Any] = {"generated_text": text}
        if req.parameters.get("details"):
            out["details"] = {"finish_reason": reason, "generated_tokens": count}
        return out

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="transformers model directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--concurrent", action="store_true", help="let requests run the pipeline concurrently"
    )
    args = parser.parse_args(argv)

    import uvicorn

    generator = PipelineGenerator(
        args.model, args.threads, serialize=not args.concurrent, device=args.device
    )
    uvicorn.run(create_app(generator), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
