"""The Realtime API's events for transcription sessions, in both of OpenAI's shapes.

GA: `session.update` with `session.type = "transcription"` and `audio.input.*`; items announced
as `conversation.item.added` / `.done`. Beta (`OpenAI-Beta: realtime=v1`):
`transcription_session.update` with flat fields; `transcription_session.created/updated` and
`conversation.item.created`. Client events become `LiveOptions` and audio bytes here; the
session's dialect-free events become JSON here. Nothing else in harken knows these shapes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harken.api.errors import describe_validation_error
from harken.errors import HarkenError, InvalidRequest
from harken.service.live import (
    Cleared,
    Committed,
    Completed,
    Delta,
    Failed,
    LiveEvent,
    LiveOptions,
    SpeechStarted,
    SpeechStopped,
    TurnDetection,
)

Dialect = Literal["ga", "beta"]

_GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
_BETA_FORMATS = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
_LOGPROBS = "item.input_audio_transcription.logprobs"


class _Lenient(BaseModel):
    # Fields this server has no use for (noise_reduction, create_response, ...) are ignored.
    model_config = ConfigDict(extra="ignore")


class _Transcription(_Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class _ServerVad(_Lenient):
    type: Literal["server_vad"]
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(default=None, ge=0, le=10_000)


class _GaFormat(_Lenient):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: Literal[24000] | None = None


class _GaInput(_Lenient):
    format: _GaFormat | None = None
    transcription: _Transcription | None = None
    turn_detection: _ServerVad | None = None


class _GaAudio(_Lenient):
    input: _GaInput | None = None


class _GaSession(_Lenient):
    type: Literal["transcription"]
    audio: _GaAudio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


class _BetaSession(_Lenient):
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: _Transcription | None = None
    turn_detection: _ServerVad | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


class _GaUpdate(_Lenient):
    session: _GaSession


class _BetaUpdate(_Lenient):
    session: _BetaSession


class _Append(_Lenient):
    audio: str


@dataclasses.dataclass(frozen=True)
class SessionChange:
    """What a session update asks for: the new options, and the model name if one was given."""

    options: LiveOptions
    model: str | None
    model_given: bool


class ClientEventError(HarkenError):
    """A client event this server refuses; sent back as an `error` event naming it."""

    def __init__(self, error: HarkenError, event_id: str | None) -> None:
        super().__init__(error.message, param=error.param, code=error.code)
        self.type = error.type
        self.event_id = event_id


def parse(text: str | bytes) -> dict[str, Any]:
    """A client event: a JSON object."""
    import json

    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidRequest("The event is not valid JSON.", code="invalid_json") from None
    if not isinstance(event, dict):
        raise InvalidRequest("An event must be a JSON object.", code="invalid_json")
    return event


def client_event_id(event: dict[str, Any]) -> str | None:
    given = event.get("event_id")
    return given if isinstance(given, str) else None


def validated(model: type[BaseModel], event: dict[str, Any]) -> Any:
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        raise describe_validation_error(list(exc.errors())) from None


def session_change(
    event: dict[str, Any], current: LiveOptions, current_model: str
) -> SessionChange:
    """`session.update` (GA) or `transcription_session.update` (beta) applied to `current`."""
    if event["type"] == "session.update":
        session = event.get("session")
        if isinstance(session, dict) and session.get("type") not in (None, "transcription"):
            raise InvalidRequest(
                "This server transcribes only: a session's `type` must be 'transcription' "
                "(connect with ?intent=transcription).",
                param="session.type",
                code="invalid_value",
            )
        update: _GaUpdate = validated(_GaUpdate, event)
        audio_input = update.session.audio.input if update.session.audio else None
        encoding = None
        if audio_input is not None and audio_input.format is not None:
            encoding = _GA_FORMATS[audio_input.format.type]
        return _changed(
            current,
            current_model,
            encoding=encoding,
            transcription=audio_input.transcription if audio_input else None,
            turn_given=audio_input is not None and "turn_detection" in audio_input.model_fields_set,
            turn=audio_input.turn_detection if audio_input else None,
            include=update.session.include,
        )
    beta: _BetaUpdate = validated(_BetaUpdate, event)
    fmt = beta.session.input_audio_format
    return _changed(
        current,
        current_model,
        encoding=_BETA_FORMATS[fmt] if fmt else None,
        transcription=beta.session.input_audio_transcription,
        turn_given="turn_detection" in beta.session.model_fields_set,
        turn=beta.session.turn_detection,
        include=beta.session.include,
    )


def _changed(
    current: LiveOptions,
    current_model: str,
    *,
    encoding: str | None,
    transcription: _Transcription | None,
    turn_given: bool,
    turn: _ServerVad | None,
    include: list[Any] | None,
) -> SessionChange:
    values: dict[str, Any] = {}
    model, model_given = current_model, False
    if encoding is not None:
        values["encoding"] = encoding
    if transcription is not None:
        given = transcription.model_fields_set
        if "model" in given and transcription.model:
            model, model_given = transcription.model, True
        if "language" in given:
            language = (transcription.language or "").strip().lower()
            values["language"] = None if language in ("", "auto") else language
        if "prompt" in given:
            values["prompt"] = transcription.prompt or None
    if turn_given:
        if turn is None:
            values["turn_detection"] = None
        else:
            default = TurnDetection()
            values["turn_detection"] = TurnDetection(
                threshold=default.threshold if turn.threshold is None else turn.threshold,
                prefix_padding_ms=(
                    default.prefix_padding_ms
                    if turn.prefix_padding_ms is None
                    else turn.prefix_padding_ms
                ),
                silence_duration_ms=(
                    default.silence_duration_ms
                    if turn.silence_duration_ms is None
                    else turn.silence_duration_ms
                ),
            )
    if include is not None:
        values["logprobs"] = _LOGPROBS in include
    return SessionChange(dataclasses.replace(current, **values), model, model_given)


def append_audio(event: dict[str, Any]) -> bytes:
    append: _Append = validated(_Append, event)
    try:
        return base64.b64decode(append.audio, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "The `audio` of input_audio_buffer.append must be base64-encoded audio bytes.",
            param="audio",
            code="invalid_audio",
        ) from None


# --- what the server sends
def event_id() -> str:
    return f"event_{uuid.uuid4().hex[:24]}"


class SessionInfo:
    """The session object sent in `session.created/updated` (and the beta twins)."""

    def __init__(self, dialect: Dialect, expires_at: int) -> None:
        self.dialect = dialect
        self.id = f"sess_{uuid.uuid4().hex[:24]}"
        self.expires_at = expires_at

    def render(self, options: LiveOptions, model: str) -> dict[str, Any]:
        turn = options.turn_detection
        turn_detection = (
            None
            if turn is None
            else {
                "type": "server_vad",
                "threshold": turn.threshold,
                "prefix_padding_ms": turn.prefix_padding_ms,
                "silence_duration_ms": turn.silence_duration_ms,
            }
        )
        transcription = {"model": model, "language": options.language, "prompt": options.prompt}
        include = [_LOGPROBS] if options.logprobs else []
        if self.dialect == "beta":
            beta_format = {v: k for k, v in _BETA_FORMATS.items()}[options.encoding]
            return {
                "id": self.id,
                "object": "realtime.transcription_session",
                "expires_at": self.expires_at,
                "modalities": ["text"],
                "input_audio_format": beta_format,
                "input_audio_transcription": transcription,
                "turn_detection": turn_detection,
                "input_audio_noise_reduction": None,
                "include": include,
            }
        ga_format: dict[str, Any] = {
            "type": {v: k for k, v in _GA_FORMATS.items()}[options.encoding]
        }
        if options.encoding == "pcm16":
            ga_format["rate"] = 24000
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.id,
            "expires_at": self.expires_at,
            "audio": {
                "input": {
                    "format": ga_format,
                    "transcription": transcription,
                    "noise_reduction": None,
                    "turn_detection": turn_detection,
                }
            },
            "include": include,
        }

    def created(self, options: LiveOptions, model: str) -> dict[str, Any]:
        kind = "transcription_session" if self.dialect == "beta" else "session"
        return {
            "type": f"{kind}.created",
            "event_id": event_id(),
            "session": self.render(options, model),
        }

    def updated(self, options: LiveOptions, model: str, *, beta_event: bool) -> dict[str, Any]:
        kind = "transcription_session" if beta_event else "session"
        return {
            "type": f"{kind}.updated",
            "event_id": event_id(),
            "session": self.render(options, model),
        }


def error_event(error: HarkenError, client_event_id: str | None = None) -> dict[str, Any]:
    body = error.body()["error"]
    return {
        "type": "error",
        "event_id": event_id(),
        "error": {**body, "event_id": client_event_id},
    }


def _item(item_id: str, dialect: Dialect, transcript: str | None, status: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "role": "user",
        "status": status,
        "content": [{"type": "input_audio", "transcript": transcript}],
    }
    return item


def render(event: LiveEvent, dialect: Dialect) -> list[dict[str, Any]]:
    """A session event as the server events a Realtime client expects, in order."""
    prefix = "conversation.item.input_audio_transcription"
    if isinstance(event, SpeechStarted):
        return [{
            "type": "input_audio_buffer.speech_started", "event_id": event_id(),
            "audio_start_ms": event.audio_start_ms, "item_id": event.item_id,
        }]  # fmt: skip
    if isinstance(event, SpeechStopped):
        return [{
            "type": "input_audio_buffer.speech_stopped", "event_id": event_id(),
            "audio_end_ms": event.audio_end_ms, "item_id": event.item_id,
        }]  # fmt: skip
    if isinstance(event, Committed):
        committed = {
            "type": "input_audio_buffer.committed", "event_id": event_id(),
            "item_id": event.item_id, "previous_item_id": event.previous_item_id,
        }  # fmt: skip
        kind = "conversation.item.created" if dialect == "beta" else "conversation.item.added"
        status = "completed" if dialect == "beta" else "in_progress"
        added = {
            "type": kind, "event_id": event_id(), "previous_item_id": event.previous_item_id,
            "item": _item(event.item_id, dialect, None, status),
        }  # fmt: skip
        return [committed, added]
    if isinstance(event, Delta):
        return [{
            "type": f"{prefix}.delta", "event_id": event_id(), "item_id": event.item_id,
            "content_index": 0, "delta": event.delta,
        }]  # fmt: skip
    if isinstance(event, Completed):
        completed: dict[str, Any] = {
            "type": f"{prefix}.completed", "event_id": event_id(), "item_id": event.item_id,
            "content_index": 0, "transcript": event.transcript,
            "usage": {"type": "duration", "seconds": round(event.seconds, 3)},
        }  # fmt: skip
        if event.logprobs is not None:
            completed["logprobs"] = [
                {"token": token, "logprob": logprob, "bytes": list(token.encode())}
                for token, logprob in event.logprobs
            ]
        if dialect == "beta":
            return [completed]
        done = {
            "type": "conversation.item.done", "event_id": event_id(), "previous_item_id": None,
            "item": _item(event.item_id, dialect, event.transcript, "completed"),
        }  # fmt: skip
        return [completed, done]
    if isinstance(event, Failed):
        body = event.error.body()["error"]
        return [{
            "type": f"{prefix}.failed", "event_id": event_id(), "item_id": event.item_id,
            "content_index": 0, "error": body,
        }]  # fmt: skip
    if isinstance(event, Cleared):
        return [{"type": "input_audio_buffer.cleared", "event_id": event_id()}]
    raise TypeError(f"unknown live event {event!r}")


def expires_at(seconds: float) -> int:
    return int(time.time() + seconds)
