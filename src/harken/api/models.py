"""`GET /v1/models` and `GET /v1/models/{id}`: every name a client may send."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from harken.api.auth import require_api_key
from harken.errors import ModelNotFound
from harken.service.transcription import TranscriptionService

router = APIRouter(dependencies=[Depends(require_api_key)])


def _model_object(service: TranscriptionService, name: str) -> dict[str, Any]:
    model: dict[str, Any] = {
        "id": name,
        "object": "model",
        "created": service.started_at,
        "owned_by": service.catalog.owner(name),
    }
    # An extension OpenAI's clients ignore: the languages a loaded model knows (["en"] for an
    # English-only one), so that a client can offer only those. Unknown until it is loaded.
    transcriber = service.transcribers().get(service.catalog.resolve_name(name) or name)
    if transcriber is not None:
        model["languages"] = sorted(transcriber.supported_languages())
    return model


@router.get("/v1/models", summary="List the models and aliases this server answers to")
async def list_models(request: Request) -> dict[str, Any]:
    service: TranscriptionService = request.app.state.service
    names = service.catalog.public_names()
    return {"object": "list", "data": [_model_object(service, n) for n in names]}


@router.get("/v1/models/{model_id:path}", summary="One model or alias")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    service: TranscriptionService = request.app.state.service
    if service.catalog.resolve_name(model_id) is None:
        raise ModelNotFound(f"The model {model_id!r} does not exist on this server.", param="model")
    return _model_object(service, model_id)
