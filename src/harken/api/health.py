"""`GET /health`: 200 when the server can take work, 503 while loading or shutting down."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from harken.errors import Overloaded, ShuttingDown
from harken.service.transcription import TranscriptionService

router = APIRouter()


@router.get("/health", summary="Readiness")
async def health(request: Request) -> JSONResponse:
    service: TranscriptionService = request.app.state.service
    if service.shutting_down:
        error: Overloaded = ShuttingDown("The server is shutting down.")
        return JSONResponse(error.body(), status_code=error.status)
    if service.load_error is not None:
        error = Overloaded("The server can't take work: its default model failed to load.")
        return JSONResponse(error.body(), status_code=error.status)
    if not service.ready.is_set():
        error = Overloaded("The server is still loading its models.")
        return JSONResponse(error.body(), status_code=error.status)
    return JSONResponse(
        {
            "status": "ok",
            "models": service.loaded_models(),
            "queue": {
                "admitted": service.scheduler.admitted,
                "capacity": service.scheduler.capacity,
            },
        }
    )
