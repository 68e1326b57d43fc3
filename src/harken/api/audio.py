"""`POST /v1/audio/transcriptions` and `/v1/audio/translations`: OpenAI's audio API.

Multipart uploads in, every OpenAI response format out (CONTRACT.md §2). The route functions
only read the form, check what depends on the request, and hand the rest to the service and
to `harken.formats`; the same renderers serve the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from harken.api.auth import require_api_key
from harken.api.sse import sse_error, sse_event, sse_headers
from harken.engine import Segment, TranscriptionInfo, TranscriptionOptions
from harken.engine.types import Task
from harken.errors import FileTooLarge, HarkenError, InvalidAudio, InvalidRequest
from harken.formats import TextJoiner, render
from harken.service.scheduler import JobStream
from harken.service.transcription import AudioUsage, TranscriptionService, duration_of

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI audio"])

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
GRANULARITIES = ("segment", "word")

# What a 200 can carry, so that the OpenAPI schema (and tools that check against it) know.
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript in the requested format, or SSE events with stream=true.",
        "content": {
            "application/json": {},
            "text/plain": {"schema": {"type": "string"}},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
}

# --- form fields shared by both routes
AudioFile = Annotated[
    UploadFile, File(description="The audio: wav, mp3, flac, ogg/opus, m4a/aac, webm, ...")
]
ModelField = Annotated[
    str | None, Form(description="A model or alias from /v1/models; empty: the default model.")
]
PromptField = Annotated[
    str | None, Form(description="Text that biases decoding (Whisper's prompt); not output.")
]
FormatField = Annotated[ResponseFormat, Form(description="json, text, srt, vtt or verbose_json.")]
TemperatureField = Annotated[
    float | None, Form(ge=0.0, le=1.0, description="Sampling temperature; empty: fallback.")
]
StreamField = Annotated[
    bool, Form(description="true: Server-Sent Events as text is recognised (json/text only).")
]
HotwordsField = Annotated[
    str | None, Form(description="Extension: words or names to favour, comma-separated.")
]
ChunkingField = Annotated[
    str | None,
    Form(
        description='How long audio is cut: "auto", or JSON {"type": "server_vad", "threshold", '
        '"prefix_padding_ms", "silence_duration_ms"}; empty: the server\'s setting.'
    ),
]


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The uploaded bytes, refused with a 413 when the file itself is over the upload limit
    (the body-limit middleware only caps the whole request, framing included)."""
    if file.size is not None and file.size > limit:
        raise _too_large(file.size, limit)
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise _too_large(len(data), limit)
    if not data:
        raise InvalidAudio("The uploaded file is empty (0 bytes).", param="file")
    return data


def _too_large(size: int, limit: int) -> FileTooLarge:
    return FileTooLarge(
        f"The uploaded file is {size / 1048576:.1f} MB, over this server's limit of "
        f"{limit / 1048576:.1f} MB (HARKEN_MAX_UPLOAD_MB).",
        param="file",
    )


async def _nested_form_field(request: Request, name: str) -> dict[str, str] | None:
    """An object the openai SDK sends as form fields `name[key]=value` (FastAPI's own form
    parsing has already read the body, so this costs nothing)."""
    prefix = f"{name}["
    form = await request.form()
    found = {
        key[len(prefix) : -1]: value
        for key, value in form.multi_items()
        if key.startswith(prefix) and key.endswith("]") and isinstance(value, str)
    }
    return found or None


def _blank_to_none(value: str | None) -> str | None:
    """Form clients send unset text fields as empty strings."""
    return value.strip() or None if value is not None else None


async def _handle(
    request: Request,
    *,
    task: Task,
    file: UploadFile,
    model: str | None,
    language: str | None,
    prompt: str | None,
    response_format: ResponseFormat,
    temperature: float | None,
    granularities: list[str],
    stream: bool,
    hotwords: str | None,
    chunking: str | dict[str, str] | None = None,
) -> Response:
    service: TranscriptionService = request.app.state.service
    for value in granularities:
        if value not in GRANULARITIES:
            # Checked here rather than by pydantic, whose error would not name the field.
            raise InvalidRequest(
                f"Unknown timestamp granularity {value!r}: use 'segment' and/or 'word'.",
                param="timestamp_granularities[]",
            )
    words = "word" in granularities
    if words and response_format != "verbose_json":
        raise InvalidRequest(
            "Word timestamps need response_format=verbose_json; the other formats have no "
            "place for them.",
            param="timestamp_granularities[]",
        )
    if stream and response_format not in ("json", "text"):
        raise InvalidRequest(
            f"stream=true sends text events and cannot carry {response_format}; use "
            "response_format json or text with stream=true, or stream=false.",
            param="stream",
        )
    loaded = await service.model(_blank_to_none(model))
    options = TranscriptionOptions(
        language=service.resolve_language(loaded, language, "language"),
        task=task,
        prompt=_blank_to_none(prompt),
        hotwords=_blank_to_none(hotwords),
        temperature=temperature,
        word_timestamps=words,
        segmentation=service.chunking(
            _blank_to_none(chunking) if isinstance(chunking, str | None) else chunking
        ),
    )
    service.check_task(loaded, options)  # before decoding: a wrong model is cheap to refuse

    data = await read_upload(file, service.settings.max_upload_bytes)
    try:
        audio = await service.decode(data)
    except HarkenError as exc:
        exc.param = exc.param or "file"
        raise
    del data
    usage = AudioUsage(duration_of(audio))

    # Started before answering, so that errors (and 429s) keep their HTTP status.
    job = await service.transcribe(loaded, audio, options)
    if stream:
        return StreamingResponse(
            _events(job, usage), media_type="text/event-stream", headers=sse_headers()
        )
    try:
        segments = [segment async for segment in job]
    finally:
        await job.aclose()
    body, media_type = render(response_format, segments, job.head, task=task, words=words)
    if isinstance(body, dict):
        return JSONResponse(body)
    return Response(body, media_type=media_type)


async def _events(
    job: JobStream[TranscriptionInfo, Segment], usage: AudioUsage
) -> AsyncIterator[bytes]:
    """One delta per recognised segment; the deltas join exactly to the done event's text."""
    joiner = TextJoiner()
    try:
        async for segment in job:
            delta = joiner.add(segment.text)
            if delta:
                yield sse_event({"type": "transcript.text.delta", "delta": delta})
        yield sse_event(
            {
                "type": "transcript.text.done",
                "text": joiner.text,
                "usage": {"type": "duration", "seconds": usage.seconds},
            }
        )
        yield b"data: [DONE]\n\n"
    except Exception as exc:
        yield sse_error(exc)
    finally:
        await job.aclose()


@router.post(
    "/v1/audio/transcriptions",
    summary="Transcribe an audio file (OpenAI audio API)",
    response_model=None,
    responses=_RESPONSES,
)
async def transcriptions(
    request: Request,
    *,
    file: AudioFile,
    model: ModelField = None,
    language: Annotated[
        str | None, Form(description="ISO 639-1 code such as en, de, zh; empty or auto: detect.")
    ] = None,
    prompt: PromptField = None,
    response_format: FormatField = "json",
    temperature: TemperatureField = None,
    timestamp_granularities: Annotated[
        list[str],
        Form(
            default_factory=list,
            alias="timestamp_granularities[]",
            description="segment and/or word (word needs verbose_json).",
            json_schema_extra={"items": {"type": "string", "enum": list(GRANULARITIES)}},
        ),
    ],
    timestamp_granularities_plain: Annotated[
        list[str],
        Form(
            default_factory=list,
            alias="timestamp_granularities",
            description="The same, as some clients spell it.",
            json_schema_extra={"items": {"type": "string", "enum": list(GRANULARITIES)}},
        ),
    ],
    stream: StreamField = False,
    hotwords: HotwordsField = None,
    chunking_strategy: ChunkingField = None,
) -> Response:
    return await _handle(
        request,
        task="transcribe",
        file=file,
        model=model,
        language=language,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        granularities=[
            g.strip()
            for g in (*timestamp_granularities, *timestamp_granularities_plain)
            if g.strip()  # form clients send an unset list as one empty value
        ],
        stream=stream,
        hotwords=hotwords,
        chunking=chunking_strategy or await _nested_form_field(request, "chunking_strategy"),
    )


@router.post(
    "/v1/audio/translations",
    summary="Translate speech in any language into English text (OpenAI audio API)",
    response_model=None,
    responses=_RESPONSES,
)
async def translations(
    request: Request,
    file: AudioFile,
    model: ModelField = None,
    prompt: PromptField = None,
    response_format: FormatField = "json",
    temperature: TemperatureField = None,
    stream: StreamField = False,
    hotwords: HotwordsField = None,
) -> Response:
    return await _handle(
        request,
        task="translate",
        file=file,
        model=model,
        language=None,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        granularities=[],
        stream=stream,
        hotwords=hotwords,
    )
