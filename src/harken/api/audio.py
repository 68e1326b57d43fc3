"""`POST /v1/audio/transcriptions` and `/v1/audio/translations`: OpenAI's audio API.

Multipart uploads in, every OpenAI response format out (CONTRACT.md §2). The routes gather the
form into an `AudioRequest`, which checks what depends on the request alone and turns itself
into the service's options (`to_options()`); the service does the rest, and `harken.formats`
renders the result (the same renderers serve the CLI).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from harken.api.auth import require_api_key
from harken.api.chunking import parse_chunking_strategy
from harken.api.sse import sse_error, sse_event, sse_headers
from harken.engine import Segment, SegmentationOptions, TranscriptionInfo, TranscriptionOptions
from harken.engine.types import ChineseScript, Task
from harken.errors import FileTooLarge, HarkenError, InvalidAudio, InvalidRequest
from harken.formats import (
    STREAM_FORMATS,
    ResponseFormat,
    TextJoiner,
    fit_to_duration,
    render,
)
from harken.languages import language_code, language_name
from harken.service.scheduler import JobStream
from harken.service.transcription import AudioUsage, TranscriptionService, duration_of

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)], tags=["OpenAI audio"])

GRANULARITIES = ("segment", "word")


def _blank_to_none(value: str | None) -> str | None:
    """Form clients send unset text fields as empty strings."""
    return value.strip() or None if value is not None else None


@dataclass
class AudioRequest:
    """One `/v1/audio/*` request as its form fields; blank fields mean "not set"."""

    task: Task
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float | None = None
    granularities: Sequence[str] = field(default_factory=list)
    stream: bool = False
    hotwords: str | None = None
    chunking_strategy: str | dict[str, str] | None = None
    chinese_script: ChineseScript | None = None

    def __post_init__(self) -> None:
        self.model = _blank_to_none(self.model)
        self.language = _blank_to_none(self.language)
        self.prompt = _blank_to_none(self.prompt)
        self.hotwords = _blank_to_none(self.hotwords)
        if isinstance(self.chunking_strategy, str):
            self.chunking_strategy = _blank_to_none(self.chunking_strategy)
        # Form clients send an unset list as one empty value.
        self.granularities = [g.strip() for g in self.granularities if g.strip()]

    @property
    def words(self) -> bool:
        return "word" in self.granularities

    def check(self) -> None:
        """Refuse fields that can't work together, naming the one to change."""
        for value in self.granularities:
            if value not in GRANULARITIES:
                # Checked here rather than by pydantic, whose error would not name the field.
                raise InvalidRequest(
                    f"Unknown timestamp granularity {value!r}: use 'segment' and/or 'word'.",
                    param="timestamp_granularities[]",
                )
        if self.words and self.response_format != "verbose_json":
            raise InvalidRequest(
                "Word timestamps need response_format=verbose_json; the other formats have no "
                "place for them.",
                param="timestamp_granularities[]",
            )
        if self.stream and self.response_format not in STREAM_FORMATS:
            raise InvalidRequest(
                f"stream=true sends events and cannot carry {self.response_format}; use "
                "response_format json, text or verbose_json with stream=true, or stream=false.",
                param="stream",
            )

    def to_options(self, segmentation: SegmentationOptions) -> TranscriptionOptions:
        """The service's options; `segmentation` is the server's default for long audio."""
        return TranscriptionOptions(
            language=language_code(self.language),
            task=self.task,
            prompt=self.prompt,
            hotwords=self.hotwords,
            temperature=self.temperature,
            word_timestamps=self.words,
            segmentation=parse_chunking_strategy(self.chunking_strategy, segmentation),
            chinese_script=self.chinese_script,
        )


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
ChineseScriptField = Annotated[
    ChineseScript | None,
    Form(
        description="Mandarin text in simplified or traditional characters, or original (as the "
        "model wrote it); empty: the server's setting (simplified by default)."
    ),
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


async def _decode_upload(service: TranscriptionService, file: UploadFile) -> np.ndarray:
    data = await read_upload(file, service.settings.max_upload_bytes)
    try:
        return await service.decode(data)
    except HarkenError as exc:
        exc.param = exc.param or "file"
        raise


async def _respond(request: Request, file: UploadFile, body: AudioRequest) -> Response:
    service: TranscriptionService = request.app.state.service
    body.check()
    loaded = await service.model(body.model)
    options = body.to_options(service.segmentation)
    service.check(loaded, options)  # before decoding: a wrong model is cheap to refuse
    audio = await _decode_upload(service, file)
    usage = AudioUsage(duration_of(audio))

    # Started before answering, so that errors (and 429s) keep their HTTP status.
    job = await service.transcribe(loaded, audio, options)
    if body.stream:
        verbose = body.response_format == "verbose_json"
        return StreamingResponse(
            _events(job, usage, task=body.task if verbose else None),
            media_type="text/event-stream",
            headers=sse_headers(),
        )
    try:
        segments = [segment async for segment in job]
    finally:
        await job.aclose()
    rendered, media_type = render(
        body.response_format, segments, job.head, task=body.task, words=body.words
    )
    if isinstance(rendered, dict):
        return JSONResponse(rendered)
    return Response(rendered, media_type=media_type)


async def _events(
    job: JobStream[TranscriptionInfo, Segment], usage: AudioUsage, *, task: Task | None = None
) -> AsyncIterator[bytes]:
    """One delta per recognised segment; the deltas join exactly to the done event's text.

    With a `task` (verbose_json), each delta is followed by its segment's times (OpenAI's
    `transcript.text.segment`) and the done event adds the language and duration, so that a
    client can show progress and build subtitles from the one pass."""
    verbose = task is not None
    joiner = TextJoiner()
    sent = 0
    try:
        async for segment in job:
            delta = joiner.add(segment.text)
            if delta:
                yield sse_event({"type": "transcript.text.delta", "delta": delta})
            if delta and verbose:
                # Times cut at the end of the audio, as in verbose_json and the subtitles.
                (segment,) = fit_to_duration([segment], job.head.duration)
                yield sse_event(
                    {
                        "type": "transcript.text.segment",
                        "id": f"seg_{sent}",
                        "start": round(segment.start, 3),
                        "end": round(segment.end, 3),
                        "text": segment.text.strip(),
                    }
                )
                sent += 1
        done: dict[str, Any] = {
            "type": "transcript.text.done",
            "text": joiner.text,
            "usage": {"type": "duration", "seconds": usage.seconds},
        }
        if verbose:
            # As verbose_json says it: a translation's language is English.
            english = task == "translate"
            done["language"] = "english" if english else language_name(job.head.language)
            done["duration"] = round(job.head.duration, 3)
        yield sse_event(done)
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
    chinese_script: ChineseScriptField = None,
) -> Response:
    body = AudioRequest(
        task="transcribe", model=model, language=language, prompt=prompt,
        response_format=response_format, temperature=temperature,
        granularities=[*timestamp_granularities, *timestamp_granularities_plain],
        stream=stream, hotwords=hotwords, chinese_script=chinese_script,
        chunking_strategy=chunking_strategy
        or await _nested_form_field(request, "chunking_strategy"),
    )  # fmt: skip
    return await _respond(request, file, body)


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
    body = AudioRequest(
        task="translate", model=model, prompt=prompt, response_format=response_format,
        temperature=temperature, stream=stream, hotwords=hotwords,
    )  # fmt: skip
    return await _respond(request, file, body)
