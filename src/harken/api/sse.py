"""Server-Sent Events framing shared by both dialects."""

from __future__ import annotations

import json
from typing import Any

from harken.errors import HarkenError


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def sse_error(error: HarkenError) -> bytes:
    """An error after the stream has started: sent as an event, then the stream ends."""
    return sse_event(error.body())


def sse_headers() -> dict[str, str]:
    # No caching, and no buffering by reverse proxies (nginx honours X-Accel-Buffering).
    return {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
