"""The FastAPI application: `create_app(settings)`.

Routes: the Hugging Face Inference API (`/models/{id}`), TGI (`/`, `/generate`,
`/generate_stream`, `/tokenize`, `/info`, `/health`, `/metrics`), OpenAI (`/v1/...`), the
toolkit's `/tasks` and the playground (`GET /`, `/static`).
Models load in the lifespan, in background threads: the server answers at once and reports
503 "currently loading" until they are ready. Nothing is loaded at import time, and nothing
heavy is imported before it is used: torch with the first model, the classifier stack
(sentence-transformers, scikit-learn) with the first /tasks request that needs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from fewshot import __version__
from fewshot.api import openapi, routes_hf, routes_openai, routes_tasks, routes_tgi
from fewshot.api.auth import require_api_key
from fewshot.api.errors import ApiError, install_error_handlers
from fewshot.api.json_body import JsonBodies
from fewshot.api.limits import BodySizeLimit
from fewshot.api.state import AppState, Loader
from fewshot.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = """\
A self-hosted few-shot inference API over fewshot's CPU engine, in three wire formats:
the Hugging Face Inference API (`POST /models/{model_id}`), Text Generation Inference
(`/generate`, `/generate_stream`, ...) and OpenAI (`/v1/completions`, `/v1/chat/completions`).
With API keys configured, inference routes need `Authorization: Bearer <key>`.
"""


def _playground() -> APIRouter:
    router = APIRouter(tags=["Playground"])

    @router.get("/", include_in_schema=False, response_model=None)
    async def playground() -> FileResponse | HTMLResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise ApiError("The playground is not installed", status=404)
        return FileResponse(index, media_type="text/html")

    return router


def create_app(settings: Settings | None = None, *, loader: Loader | None = None) -> FastAPI:
    """Build the app. `loader(source, settings) -> LLM` replaces `LLM.load` (tests)."""
    settings = settings or Settings()
    state = AppState(settings, loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        routes_tasks.open_service(app)
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="fewshot",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.fewshot = state
    app.state.metrics = state.metrics
    install_error_handlers(app)
    openapi.install(app)
    app.add_middleware(JsonBodies)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        read_timeout_s=settings.body_read_timeout_s,
    )

    app.include_router(routes_hf.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_tgi.public)
    app.include_router(routes_tgi.router)
    app.include_router(routes_tasks.router, dependencies=[Depends(require_api_key)])
    app.include_router(_playground())
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app
