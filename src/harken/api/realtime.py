"""`/v1/realtime?intent=transcription`: OpenAI's Realtime API for live transcription, over a
WebSocket, and `POST /v1/realtime/client_secrets` for browsers.

The route authenticates, admits the session (a cap on sessions per server), then runs two
loops: one reads client events in order and hands them to the session (`service/live.py`);
one sends the session's events back in the client's dialect (`realtime_events.py`). A bad
event gets an `error` event naming it and the session goes on. Past a limit (sessions, idle
time, session length) the client gets an `error` event and close code 1008. A client that
vanishes ends the session at once: its model calls stop before their next step.

Keys: as everywhere (`Authorization: Bearer`, `api-key`), or, for browsers, which cannot set
headers on a WebSocket, in the `openai-insecure-api-key.KEY` subprotocol that OpenAI's browser
clients send; either may carry a short-lived client secret instead of a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Request, WebSocket
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.websockets import WebSocketDisconnect, WebSocketState

from harken.api import realtime_events as wire
from harken.api.auth import ApiKeys, require_api_key, supplied_key
from harken.api.errors import error_response
from harken.config import Settings
from harken.engine import TranscriptionOptions
from harken.errors import (
    AuthenticationFailed,
    HarkenError,
    InvalidRequest,
    RateLimited,
    ServerError,
    ShuttingDown,
)
from harken.service.live import LiveOptions, LiveSession, PartialSlots
from harken.service.metrics import Metrics
from harken.service.transcription import LoadedModel, TranscriptionService

log = logging.getLogger(__name__)

router = APIRouter()

_KEY_PROTOCOL = "openai-insecure-api-key."
_BETA_PROTOCOL = "openai-beta.realtime-v1"
_POLICY_VIOLATION = 1008  # the close code for a limit (RFC 6455)


class ClientSecrets:
    """Short-lived tokens that open a Realtime session in place of a key (never anything else)."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def issue(self, seconds: int) -> tuple[str, int]:
        now = time.time()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        value = f"ek_{secrets.token_urlsafe(24)}"
        self._expiry[value] = now + seconds
        return value, int(now + seconds)

    def valid(self, supplied: str) -> bool:
        now = time.time()
        found = False
        for value, expiry in self._expiry.items():
            found |= hmac.compare_digest(value.encode(), supplied.encode()) and expiry > now
        return found


class RealtimeState:
    """What a server's sessions share: their count, the client secrets, the partial slots."""

    def __init__(self, settings: Settings) -> None:
        self.sessions = 0
        self.secrets = ClientSecrets()
        # Two drafts at once (they share one batched model call), or one per worker beyond.
        self.partial_slots = PartialSlots(max(2, settings.workers))


def realtime_state(app: Any) -> RealtimeState:
    state = getattr(app.state, "realtime", None)
    if state is None:
        state = app.state.realtime = RealtimeState(app.state.settings)
    return state


# --- client secrets
class _ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="ignore")
    anchor: str | None = None
    seconds: int | None = Field(default=None, ge=10, le=7200)


class ClientSecretRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    expires_after: _ExpiresAfter | None = None
    session: dict[str, Any] | None = None


# The body is optional: none asks for the defaults.
_NO_BODY = Body(default_factory=ClientSecretRequest)


class ClientSecret(BaseModel):
    value: str
    expires_at: int
    session: dict[str, Any]


@router.post(
    "/v1/realtime/client_secrets",
    dependencies=[Depends(require_api_key)],
    summary="A short-lived token that opens one Realtime session (for browsers)",
)
async def client_secrets(request: Request, body: ClientSecretRequest = _NO_BODY) -> ClientSecret:
    settings: Settings = request.app.state.settings
    seconds = settings.realtime_client_secret_seconds
    if body.expires_after is not None and body.expires_after.seconds:
        seconds = body.expires_after.seconds
    value, expires = realtime_state(request.app).secrets.issue(seconds)
    return ClientSecret(
        value=value, expires_at=expires, session=body.session or {"type": "transcription"}
    )


# --- the WebSocket
def _offered_protocols(websocket: WebSocket) -> list[str]:
    return [p.strip() for p in websocket.scope.get("subprotocols", []) if p.strip()]


def _authenticate(websocket: WebSocket, keys: ApiKeys, tokens: ClientSecrets) -> None:
    if not keys.required:
        return
    supplied = supplied_key(Headers(scope=websocket.scope))
    if not supplied:
        for protocol in _offered_protocols(websocket):
            if protocol.startswith(_KEY_PROTOCOL):
                supplied = protocol[len(_KEY_PROTOCOL) :]
    if not supplied:
        raise AuthenticationFailed(
            "An API key is required: send `Authorization: Bearer KEY`, or from a browser the "
            f"subprotocol `{_KEY_PROTOCOL}KEY` with a key or a client secret."
        )
    if not (keys.valid(supplied) or tokens.valid(supplied)):
        raise AuthenticationFailed("The API key is not valid.")


async def _refuse(websocket: WebSocket, error: HarkenError) -> None:
    """Refuse the handshake with the contract's error body (where the server can send one)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(error))
    else:
        await websocket.close(code=_POLICY_VIOLATION)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    app = websocket.app
    settings: Settings = app.state.settings
    service: TranscriptionService = app.state.service
    metrics: Metrics = app.state.metrics
    state = realtime_state(app)
    try:
        _authenticate(websocket, app.state.api_keys, state.secrets)
        intent = websocket.query_params.get("intent", "transcription")
        if intent != "transcription":
            raise InvalidRequest(
                "This server offers transcription sessions only: connect with "
                "?intent=transcription.",
                param="intent",
                code="invalid_value",
            )
        if service.shutting_down:
            raise ShuttingDown()
    except HarkenError as error:
        await _refuse(websocket, error)
        return

    offered = _offered_protocols(websocket)
    beta = _BETA_PROTOCOL in offered or "realtime=v1" in websocket.headers.get("openai-beta", "")
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    metrics.realtime_sessions_started.inc()
    if state.sessions >= settings.realtime_max_sessions:
        full = RateLimited(
            f"This server has its maximum of {settings.realtime_max_sessions} live sessions "
            "open; retry shortly.",
        )
        full.code = "too_many_sessions"
        await _end(websocket, metrics, "too_many_sessions", full)
        return
    state.sessions += 1
    metrics.realtime_sessions_active.inc()
    try:
        reason, ending = await _serve(websocket, settings, service, state, "beta" if beta else "ga")
    finally:
        state.sessions -= 1
        metrics.realtime_sessions_active.dec()
    await _end(websocket, metrics, reason, ending)


async def _end(
    websocket: WebSocket, metrics: Metrics, reason: str, error: HarkenError | None
) -> None:
    metrics.realtime_sessions_ended.labels(reason).inc()
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):
        if error is not None:
            await websocket.send_text(json.dumps(wire.error_event(error)))
            await websocket.close(code=_POLICY_VIOLATION, reason=(error.code or "")[:100])
        else:
            await websocket.close()


class _Connection:
    """One session's socket: its sender, and the client events it reads, in order."""

    def __init__(
        self,
        websocket: WebSocket,
        settings: Settings,
        service: TranscriptionService,
        dialect: wire.Dialect,
    ) -> None:
        self.websocket = websocket
        self.settings = settings
        self.service = service
        self.dialect = dialect
        self.info = wire.SessionInfo(
            dialect, wire.expires_at(settings.realtime_max_session_seconds)
        )
        self.send_lock = asyncio.Lock()

    async def send(self, event: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_text(json.dumps(event, ensure_ascii=False))


async def _serve(
    websocket: WebSocket,
    settings: Settings,
    service: TranscriptionService,
    state: RealtimeState,
    dialect: wire.Dialect,
) -> tuple[str, HarkenError | None]:
    """Run the session until it ends; returns why (for metrics) and the error to close with."""
    connection = _Connection(websocket, settings, service, dialect)
    try:
        model = await service.model(None)
    except HarkenError as error:
        return "error", error
    session = LiveSession(service, model, LiveOptions(), state.partial_slots)
    sender = asyncio.create_task(_send_events(connection, session))
    try:
        await connection.send(connection.info.created(session.options, model.entry.name))
        return await _read_events(connection, session)
    except WebSocketDisconnect:
        return "client_gone", None
    finally:
        await session.close()
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender


async def _send_events(connection: _Connection, session: LiveSession) -> None:
    while True:
        event = await session.events.get()
        for message in wire.render(event, connection.dialect):
            await connection.send(message)


async def _read_events(
    connection: _Connection, session: LiveSession
) -> tuple[str, HarkenError | None]:
    settings = connection.settings
    deadline = time.monotonic() + settings.realtime_max_session_seconds
    limit = settings.realtime_max_event_bytes
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "session_too_long", _session_expired(settings)
        wait = min(settings.realtime_idle_timeout_seconds, left)
        try:
            message = await asyncio.wait_for(connection.websocket.receive(), max(wait, 0.001))
        except TimeoutError:
            # Which limit the wait was cut to, not the clock: uvloop's timers may fire a
            # millisecond before time.monotonic() reaches the deadline.
            if left <= settings.realtime_idle_timeout_seconds:
                return "session_too_long", _session_expired(settings)
            if session.busy:
                continue  # the client waits for a transcript: not idle
            return "idle_timeout", _limit_error(
                f"No event arrived for {settings.realtime_idle_timeout_seconds:g} s; the session "
                "was closed.",
                "idle_timeout",
            )
        if message["type"] == "websocket.disconnect":
            if connection.service.shutting_down:
                return "shutdown", None
            code = message.get("code", 1000)
            return ("client_closed" if code in (1000, 1001) else "client_gone"), None
        if connection.service.shutting_down:
            return "shutdown", ShuttingDown()
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        if len(data) > limit:
            await connection.send(
                wire.error_event(
                    InvalidRequest(
                        f"The event is {len(data) / 1048576:.1f} MB, over this server's limit "
                        f"of {limit / 1048576:g} MB; send audio in smaller appends.",
                        code="event_too_large",
                    )
                )
            )
            continue
        client_event_id: str | None = None
        try:
            event = wire.parse(data)
            client_event_id = wire.client_event_id(event)
            await _handle(connection, session, event)
        except HarkenError as error:
            await connection.send(wire.error_event(error, client_event_id))
        except WebSocketDisconnect:
            raise
        except Exception:
            # A bug must not take the session down with it: the client hears of it and goes on.
            log.exception("a realtime client event failed")
            failure = ServerError("The server failed to process the event (a bug).")
            await connection.send(wire.error_event(failure, client_event_id))


async def _handle(connection: _Connection, session: LiveSession, event: dict[str, Any]) -> None:
    kind = event.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest("The event has no `type`.", param="type", code="invalid_event")
    if kind == "input_audio_buffer.append":
        await session.append(wire.append_audio(event))
    elif kind == "input_audio_buffer.commit":
        await session.commit()
    elif kind == "input_audio_buffer.clear":
        await session.clear()
    elif kind in ("session.update", "transcription_session.update"):
        change = wire.session_change(event, session.options, session.model.entry.name)
        model = session.model
        if change.model_given:
            model = await _model(connection.service, change.model, "transcription.model")
        _check_language(connection.service, model, change.options)
        session.update(model, change.options)
        beta_event = kind == "transcription_session.update"
        await connection.send(
            connection.info.updated(session.options, model.entry.name, beta_event=beta_event)
        )
    else:
        raise InvalidRequest(
            f"This server does not know the client event {kind!r}; a transcription session "
            "takes session.update, input_audio_buffer.append, .commit and .clear.",
            param="type",
            code="invalid_event",
        )


async def _model(service: TranscriptionService, name: str | None, param: str) -> LoadedModel:
    try:
        return await service.model(name)
    except HarkenError as error:
        error.param = param
        raise


def _check_language(
    service: TranscriptionService, model: LoadedModel, options: LiveOptions
) -> None:
    try:
        service.check(model, TranscriptionOptions(language=options.language))
    except HarkenError as error:
        error.param = "transcription.language"
        raise


def _limit_error(message: str, code: str) -> HarkenError:
    return InvalidRequest(message, code=code)


def _session_expired(settings: Settings) -> HarkenError:
    return _limit_error(
        f"The session reached this server's limit of {settings.realtime_max_session_seconds:g} s;"
        " open a new one.",
        "session_expired",
    )
