"""`POST /v1/chat/completions`: MiMo's speech recognition (and OpenAI's `input_audio` parts)."""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from harken.api.auth import require_api_key
from harken.api.sse import sse_error, sse_event, sse_headers
from harken.engine import TranscriptionOptions
from harken.engine.types import ChineseScript
from harken.errors import (
    FileTooLarge,
    HarkenError,
    InvalidAudio,
    InvalidRequest,
)
from harken.formats import TextJoiner
from harken.languages import language_code
from harken.service.transcription import (
    AudioUsage,
    LoadedModel,
    TranscriptionService,
    duration_of,
)

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)])


# --- request models
LANGUAGE_PARAM = "asr_options.language"


class InputAudio(BaseModel):
    data: str = Field(description="A data URL `data:audio/wav;base64,...`, or raw base64.")
    format: str | None = Field(None, description="With raw base64: wav, mp3, flac, ...")


class InputAudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


ContentPart = Annotated[InputAudioPart | TextPart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | ContentPart | list[ContentPart] | None = None

    def parts(self) -> list[InputAudioPart | TextPart]:
        if self.content is None:
            return []
        if isinstance(self.content, str):
            return [TextPart(type="text", text=self.content)]
        if isinstance(self.content, list):
            return list(self.content)
        return [self.content]


class AsrOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    language: str | None = Field("auto", description="auto, zh, en, or another ISO 639-1 code")
    hotwords: str | list[str] | None = None
    prompt: str | None = None
    chinese_script: ChineseScript | None = Field(
        None,
        description="Extension: Mandarin text in simplified (MiMo's own) or traditional "
        "characters, or original (as the model wrote it); unset: the server's setting.",
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    asr_options: AsrOptions | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: StrictInt | None = None  # strict: `true` is not 1
    # Accepted for compatibility; transcription length is set by the audio.
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    thinking: Any = None
    user: str | None = None

    def audio_parts(self) -> list[tuple[str, InputAudio]]:
        """Every input_audio part in order, with its location for error messages."""
        found = []
        for i, message in enumerate(self.messages):
            for j, part in enumerate(message.parts()):
                if isinstance(part, InputAudioPart):
                    location = f"messages.{i}.content"
                    if isinstance(message.content, list):
                        location += f".{j}"
                    found.append((f"{location}.input_audio.data", part.input_audio))
        return found

    def context_text(self) -> str:
        """Text parts, system messages and asr_options.prompt: decoding context, not output."""
        texts = [
            part.text.strip()
            for message in self.messages
            for part in message.parts()
            if isinstance(part, TextPart) and part.text.strip()
        ]
        if self.asr_options and self.asr_options.prompt and self.asr_options.prompt.strip():
            texts.append(self.asr_options.prompt.strip())
        return " ".join(texts)

    def hotwords(self) -> str | None:
        words = self.asr_options.hotwords if self.asr_options else None
        if isinstance(words, list):
            words = ", ".join(w.strip() for w in words if w.strip())
        return words.strip() or None if words else None

    def check(self) -> None:
        """Refuse what no model can do for this request, before anything is decoded."""
        if self.n is not None and self.n != 1:
            raise InvalidRequest("Only n=1 is supported for speech recognition.", param="n")
        if not self.audio_parts():
            raise InvalidRequest(
                "The messages contain no audio: add a content part "
                '{"type": "input_audio", "input_audio": {"data": "data:audio/wav;base64,..."}}.',
                param="messages",
            )

    def to_options(self) -> TranscriptionOptions:
        language = self.asr_options.language if self.asr_options else None
        return TranscriptionOptions(
            language=language_code(language, param=LANGUAGE_PARAM),
            prompt=self.context_text() or None,
            hotwords=self.hotwords(),
            temperature=self.temperature,
            chinese_script=self.asr_options.chinese_script if self.asr_options else None,
        )


# --- audio payloads
def audio_bytes(audio: InputAudio, param: str, max_bytes: int) -> bytes:
    """The bytes of one input_audio part; its size is checked before anything is decoded."""
    data = audio.data.strip()
    if data[:8].lower().startswith(("http://", "https://")):
        raise InvalidRequest(
            "Audio URLs are not fetched by this server; send the audio inline as a base64 data "
            "URL (data:audio/wav;base64,...).",
            param=param,
            code="invalid_audio",
        )
    if data[:5].lower() == "data:":
        header, comma, payload = data.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise InvalidAudio(
                "The data URL must be base64-encoded: data:audio/wav;base64,<payload>.",
                param=param,
            )
    else:
        payload = data
    if len(payload) > max_bytes:
        raise FileTooLarge(
            f"The audio payload is {len(payload) / 1048576:.1f} MB of base64, over this "
            f"server's limit of {max_bytes / 1048576:.1f} MB.",
            param=param,
        )
    try:
        raw = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAudio("The audio data is not valid base64.", param=param) from None
    if not raw:
        raise InvalidAudio("The audio is empty.", param=param)
    return raw


async def _decode_parts(
    service: TranscriptionService, parts: list[tuple[str, InputAudio]]
) -> list[np.ndarray]:
    """Every audio part decoded; all of the payloads together within the size limit, checked
    before the first one is decoded."""
    budget = service.settings.max_payload_bytes
    payloads = []
    for param, audio in parts:
        raw = audio_bytes(audio, param, budget)
        budget -= len(audio.data)
        payloads.append((param, raw))
    clips: list[np.ndarray] = []
    for param, raw in payloads:
        try:
            clips.append(await service.decode(raw))
        except HarkenError as exc:
            exc.param = exc.param or param
            raise
    return clips


# --- responses
def usage_body(usage: AudioUsage, completion_tokens: int, context_tokens: int) -> dict[str, Any]:
    prompt_tokens = usage.audio_tokens + context_tokens
    return {
        "completion_tokens": completion_tokens,
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": 0},
        "prompt_tokens_details": {"audio_tokens": usage.audio_tokens, "cached_tokens": 0},
        "seconds": usage.seconds,
    }


def completion_body(
    completion_id: str, created: int, model: str, text: str, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": text,
                    "audio": None,
                    "tool_calls": None,
                    "audio_tokens": [],
                },
            }
        ],
        "usage": usage,
    }


def chunk_body(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


# --- the route
@router.post(
    "/v1/chat/completions",
    summary="Transcribe audio parts (MiMo mimo-v2.5-asr dialect)",
    response_model=None,
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service: TranscriptionService = request.app.state.service
    body.check()
    model = await service.model(body.model)
    options = body.to_options()
    service.check(model, options, language_param=LANGUAGE_PARAM)
    clips = await _decode_parts(service, body.audio_parts())

    completion_id = uuid.uuid4().hex
    created = int(time.time())
    usage = AudioUsage(sum(duration_of(clip) for clip in clips))
    context_tokens = service.count_tokens(model, options.prompt or "")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # Start the first job before answering, so that errors (and 429s) keep their status.
        first = await service.transcribe(model, clips[0], options)
        return StreamingResponse(
            _stream(
                service, model, clips, options, first, completion_id, created, body.model,
                usage, context_tokens, include_usage,
            ),
            media_type="text/event-stream",
            headers=sse_headers(),
        )  # fmt: skip

    joiner = TextJoiner()
    for index, clip in enumerate(clips):
        if index:
            joiner.next_part()
        job = await service.transcribe(model, clip, options)
        async for segment in job:
            joiner.add(segment.text)
    completion_tokens = service.count_tokens(model, joiner.text)
    return JSONResponse(
        completion_body(
            completion_id, created, body.model, joiner.text,
            usage_body(usage, completion_tokens, context_tokens),
        )
    )  # fmt: skip


async def _stream(
    service: TranscriptionService,
    model: LoadedModel,
    clips: list[np.ndarray],
    options: TranscriptionOptions,
    first: Any,
    completion_id: str,
    created: int,
    model_name: str,
    usage: AudioUsage,
    context_tokens: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], **extra: Any) -> bytes:
        return sse_event(chunk_body(completion_id, created, model_name, delta, **extra))

    joiner = TextJoiner()
    job = first
    try:
        yield chunk({"role": "assistant", "content": ""})
        for index, clip in enumerate(clips):
            if index:
                joiner.next_part()
                job = await service.transcribe(model, clip, options)
            async for segment in job:
                delta = joiner.add(segment.text)
                if delta:
                    yield chunk({"content": delta})
        final_usage = usage_body(usage, service.count_tokens(model, joiner.text), context_tokens)
        yield chunk({}, finish_reason="stop", usage=final_usage)
        if include_usage:
            yield sse_event(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_name,
                    "choices": [],
                    "usage": final_usage,
                }
            )
        yield b"data: [DONE]\n\n"
    except Exception as exc:
        yield sse_error(exc)
    finally:
        await job.aclose()
