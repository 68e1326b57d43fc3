"""One error body everywhere (CONTRACT.md §4), including FastAPI's own validation failures."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from harken.api.openapi import tighten
from harken.errors import (
    HarkenError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    ShuttingDown,
)

log = logging.getLogger(__name__)


def http_headers(error: HarkenError) -> dict[str, str]:
    """What HTTP adds to an error: when to come back, and, from a server that is going away,
    to close the connection so that a keep-alive client reconnects elsewhere."""
    headers = dict(error.headers)
    if isinstance(error, RateLimited) and error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, ShuttingDown):
        headers["Connection"] = "close"
    return headers


async def send_error(send: Send, error: HarkenError, *, close: bool = False) -> None:
    """The contract's error body sent straight over ASGI, for middleware that answers before
    (or instead of) the routes; `close` asks the client to drop the connection."""
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in http_headers(error).items()),
    ]
    if close and not isinstance(error, ShuttingDown):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(error: HarkenError, *, close: bool = False) -> JSONResponse:
    """The contract's error body as a response; `close` asks the client to drop the
    connection."""
    headers = http_headers(error)
    if close:
        headers["Connection"] = "close"
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def describe_validation_error(errors: list[Any]) -> InvalidRequest:
    """The first pydantic error as a sentence naming the field, e.g. `messages.0.content`."""
    if not errors:
        return InvalidRequest("The request is not valid.")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header", "path")]
    # Drop pydantic's union/tag branch names (`function-after[...]`, `input_audio`) from the path.
    param = ".".join(p for p in loc if not p.endswith("]")) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
    if kind == "missing" and param is None:
        return InvalidRequest(
            "The request body is empty: send the request as a JSON object.", code="invalid_json"
        )
    if kind == "missing":
        message = f"The field {param!r} is required."
    elif kind in ("model_attributes_type", "dict_type") and not loc:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    else:
        msg = str(first.get("msg", "is not valid"))
        message = f"The field {param!r} is not valid: {msg}." if param else f"{msg}."
    return InvalidRequest(message, param=param)


ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_STATUSES = {
    "400": "Bad request: bad JSON, a missing or wrong field, audio that can't be decoded",
    "401": "Missing or wrong API key",
    "404": "Unknown model or route",
    "408": "The request body arrived too slowly",
    "413": "Body, payload or audio duration over a limit",
    "429": "At capacity; retry after `Retry-After` seconds",
    "503": "Shutting down, or the model is not loaded yet",
}


def document_error_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema as clients see the API: the contract's errors, not FastAPI's 422."""
    reference = {"$ref": "#/components/schemas/ErrorBody"}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in _ERROR_STATUSES.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["ErrorBody"] = ERROR_BODY_SCHEMA
    return schema


def install_error_handlers(app: FastAPI) -> None:
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = tighten(document_error_body(default_openapi()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(HarkenError)
    async def _harken(request: Request, exc: HarkenError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(describe_validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error: HarkenError = NotFound(
                f"There is no route {request.method} {request.url.path}.", code="unknown_route"
            )
        else:
            error = HarkenError(str(exc.detail))
            error.status = exc.status_code
            error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
            error.code = None
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # Starlette re-raises after this answer and uvicorn then drops the connection: say so,
        # so that a keep-alive client opens a new one instead of failing its next request.
        error = ServerError(
            "The server failed to process the request (a bug).", headers={"Connection": "close"}
        )
        return error_response(error)
