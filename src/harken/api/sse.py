"""Server-Sent Events framing shared by both dialects."""

from __future__ import annotations

import json
import logging
from typing import Any

from harken.errors import HarkenError, ServerError

log = logging.getLogger(__name__)


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def sse_error(error: Exception) -> bytes:
    """An error after the stream has started: sent as an event, then the stream ends.

    A HarkenError keeps its own message; anything else is a bug, logged here and reported
    without details."""
    if not isinstance(error, HarkenError):
        log.error("transcription failed mid-stream", exc_info=error)
        error = ServerError("The transcription failed (a bug); the stream ends here.")
    return sse_event(error.body())


def sse_headers() -> dict[str, str]:
    # No caching, and no buffering by reverse proxies (nginx honours X-Accel-Buffering).
    return {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
