"""A small stand-in for the fewshot server's HTTP surface, for the playground's browser tests.

It serves the real static playground and answers GET /info, GET /v1/models and
POST /generate_stream in TGI's wire format with canned, slowly streamed tokens, so the page's
own behaviour (streaming, mid-stream errors, auth prompts) can be tested without a model.
The end-to-end test against the real app lives in test_playground.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[2] / "src" / "fewshot" / "api" / "static"
MODELS = ["fake/tiny-gpt-neo", "fake/other-model"]
WORDS = [" fromage", " de", " chèvre", " frais", "\n", "###", " never"]


def _error(status: int, message: str, error_type: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


def create_fake_app(
    api_key: str | None = None, delay: float = 0.08, presets: list | None = None
) -> FastAPI:
    app = FastAPI()
    app.state.requests = []  # bodies of POST /generate_stream, for assertions

    def authorized(request: Request) -> bool:
        return api_key is None or request.headers.get("authorization") == f"Bearer {api_key}"

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/info")
    def info() -> dict:
        return {
            "model_id": MODELS[0],
            "version": "0.0-fake",
            "max_total_tokens": 512,
            "auth_required": api_key is not None,
        }

    if presets is not None:

        @app.get("/presets")
        def get_presets() -> dict:
            return {"presets": presets}

    @app.get("/v1/models")
    def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "owned_by": "fewshot"} for m in MODELS],
        }

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        if not authorized(request):
            return _error(401, "Unauthorized: missing or invalid API key", "authentication")
        body = await request.json()
        app.state.requests.append(body)
        params = body.get("parameters") or {}
        top_p = params.get("top_p")
        if top_p is not None and not 0 < top_p < 1:
            return _error(
                422, "Input validation error: `top_p` must be > 0.0 and < 1.0", "validation"
            )
        stop = (params.get("stop") or [None])[0]
        max_new = int(params.get("max_new_tokens") or 20)
        fail_mid_stream = body["inputs"].endswith("FAIL")
        pause = delay * 10 if "SLOW" in body["inputs"] else delay

        async def events():
            text = ""
            finish = "length"
            for i, word in enumerate(WORDS[:max_new]):
                await asyncio.sleep(pause)
                if fail_mid_stream and i == 2:
                    yield f"data:{json.dumps({'error': 'Request failed during generation: boom', 'error_type': 'generation'})}\n\n"
                    return
                text += word
                last = i == len(WORDS[:max_new]) - 1 or (stop is not None and text.endswith(stop))
                if stop is not None and text.endswith(stop):
                    finish = "stop_sequence"
                token = {"id": 100 + i, "text": word, "logprob": -0.5, "special": False}
                details = {
                    "finish_reason": finish,
                    "generated_tokens": i + 1,
                    "seed": None,
                    "input_length": 42,
                }
                event = {
                    "index": i,
                    "token": token,
                    "generated_text": text if last else None,
                    "details": details if last else None,
                }
                # Split each event over two writes to exercise the client's SSE reassembly.
                payload = f"data:{json.dumps(event)}\n\n"
                yield payload[:7]
                yield payload[7:]
                if last:
                    return

        headers = {
            "x-prefix-cache-tokens": "32",
            "x-prompt-tokens": "42",
            "X-Accel-Buffering": "no",
        }
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    return app
