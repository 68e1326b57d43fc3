"""`GET /metrics`: Prometheus text format (behind the API key when keys are set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from harken.api.auth import require_api_key
from harken.service.metrics import Metrics

router = APIRouter()


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests, latency, audio seconds, queue, batches, workers",
    dependencies=[Depends(require_api_key)],
    response_class=Response,
)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
