"""The FastAPI application: routers, error handlers, limits, and the service's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from harken import __version__
from harken.api import audio, chat, docs, health, models, realtime, web
from harken.api.auth import ApiKeyMiddleware, ApiKeys
from harken.api.errors import install_error_handlers
from harken.api.limits import BodyLimitMiddleware
from harken.api.metrics import router as metrics_router
from harken.api.observability import ObservabilityMiddleware
from harken.api.timeouts import ClientTimeoutMiddleware
from harken.config import Settings
from harken.service.transcription import TranscriptionService

# Room for the JSON or multipart framing around the audio itself.
_FRAMING_SLACK = 256 * 1024
_SMALL_BODY = 1024 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = TranscriptionService(settings)
    keys = ApiKeys(settings.all_api_keys())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background: the port answers at once, /health says 503 until ready.
        loading = asyncio.create_task(service.preload())
        try:
            yield
        finally:
            loading.cancel()
            await service.shutdown(settings.shutdown_grace_seconds)

    app = FastAPI(
        title="harken",
        version=__version__,
        summary="Self-hosted speech recognition: MiMo ASR and OpenAI audio APIs.",
        lifespan=lifespan,
        # FastAPI's pages load from a CDN; harken.api.docs serves the same from this server.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.api_keys = keys
    app.state.settings = settings
    app.state.metrics = service.scheduler.metrics
    install_error_handlers(app)

    def limit_for(path: str) -> int:
        if path == "/v1/chat/completions":
            return settings.max_payload_bytes + _FRAMING_SLACK
        if path.startswith("/v1/audio/"):
            return settings.max_upload_bytes + _FRAMING_SLACK
        return _SMALL_BODY

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    # Outside the body limit: a request without a valid key is refused before its body is read.
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(
        ClientTimeoutMiddleware,
        idle_timeout=settings.body_idle_timeout_seconds,
        total_timeout=settings.body_timeout_seconds,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "api-key", "content-type"],
        )
    # Outermost: every response gets a request id, a log line and its metrics.
    app.add_middleware(ObservabilityMiddleware, metrics=service.scheduler.metrics)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(metrics_router)
    app.include_router(web.router)  # the page at `/`; needs no key, asks for one
    if settings.docs:
        app.include_router(docs.router)
    app.include_router(audio.router)
    app.include_router(realtime.router)
    return app
