"""Request ids, one structured log line per request, and the HTTP metrics.

An ASGI middleware rather than a FastAPI dependency, so it sees every response: 404s, 413s from
the body limit, 429s, and streams until their last byte. The log line names the route, never
the audio, the query string or any header value (keys travel in headers).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harken.service.metrics import Metrics

log = logging.getLogger("harken.access")

REQUEST_ID_HEADER = "x-request-id"
# A caller's own id is kept (to follow a request across services) if it looks like an id.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_bytes = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_of(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_seconds.labels(method, route).observe(elapsed)
            log.info(
                json.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 1),
                        "response_bytes": response_bytes,
                        "client": _client(scope),
                    },
                    separators=(",", ":"),
                )
            )


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1").strip()
            if _CALLER_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


def _route_of(scope: Scope) -> str:
    """The route's template (`/v1/models/{model_id}`), so metrics don't grow per model name;
    "unmatched" for paths no route answers."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None
