"""A small Python client for a harken server (or any server speaking the same two dialects).

The `openai` SDK already fits OpenAI's audio API; what it lacks for MiMo's dialect is building
the `input_audio` data URL and passing `asr_options`, and a stream of plain text. This client
covers both dialects with one small surface, sync (`Client`) and async (`AsyncClient`):

    with harken.Client("http://127.0.0.1:8000", api_key="KEY") as client:
        client.mimo_transcribe("clip.wav", language="en").text       # MiMo chat completions
        client.transcribe("clip.wav", response_format="srt").text     # OpenAI /v1/audio
        for delta in client.transcribe_stream("long.mp3"): print(delta, end="")

Audio is a path, bytes, or a binary file object. Errors from the server raise `HarkenAPIError`
with the contract's status, message, type, code and param.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, Self, TypeAlias, TypeVar, cast

import httpx

from harken.formats import ResponseFormat

AudioInput: TypeAlias = str | os.PathLike[str] | bytes | IO[bytes]

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
MIMO_MODEL = "mimo-v2.5-asr"

# Sniffed from the first bytes, for callers that pass bytes without a name.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"RIFF", 0, "audio/wav"),
    (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"\xff\xfb", 0, "audio/mpeg"),
    (b"\xff\xf3", 0, "audio/mpeg"),
    (b"\x1aE\xdf\xa3", 0, "audio/webm"),
    (b"ftyp", 4, "audio/mp4"),
)
_EXTENSIONS = {"audio/wav": "wav", "audio/flac": "flac", "audio/ogg": "ogg",
               "audio/mpeg": "mp3", "audio/webm": "webm", "audio/mp4": "m4a"}  # fmt: skip


class HarkenAPIError(Exception):
    """The server answered with an error body (CONTRACT.md §4), before or during a stream."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param

    @classmethod
    def from_body(cls, body: Any, status: int | None) -> HarkenAPIError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(f"unexpected error response: {str(body)[:200]}", status=status)
        return cls(
            str(error.get("message") or "unknown error"),
            status=status,
            type=error.get("type"),
            code=error.get("code"),
            param=error.get("param"),
        )


@dataclass
class Transcript:
    """One answer. `text` is the transcript; for `srt`/`vtt` it is the subtitle file itself.
    With `verbose_json`: the `language`, `duration`, `segments` and (when asked) `words`."""

    text: str
    usage: dict[str, Any] | None = None
    raw: dict[str, Any] | str = ""
    language: str | None = None
    duration: float | None = None
    segments: list[dict[str, Any]] | None = None
    words: list[dict[str, Any]] | None = None


# --- building requests (shared by the sync and async clients)
@dataclass(frozen=True)
class _Audio:
    name: str
    data: bytes
    mime: str


def read_audio(audio: AudioInput, mime: str | None = None) -> _Audio:
    """The bytes of `audio`, a file name for uploads, and its MIME type."""
    if isinstance(audio, bytes | bytearray):
        data, name = bytes(audio), None
    elif isinstance(audio, str | os.PathLike):
        path = Path(audio)
        data, name = path.read_bytes(), path.name
    else:
        data = audio.read()
        raw_name = getattr(audio, "name", None)
        name = Path(raw_name).name if isinstance(raw_name, str) else None
    if mime is None and name:
        mime = mimetypes.guess_type(name)[0]
        if mime in ("audio/x-wav", "audio/wave"):
            mime = "audio/wav"
        elif mime == "audio/x-flac":
            mime = "audio/flac"
    if mime is None or not mime.startswith(("audio/", "video/")):
        mime = _sniff(data)
    return _Audio(name or f"audio.{_EXTENSIONS.get(mime, 'bin')}", data, mime)


def _sniff(data: bytes) -> str:
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    return "audio/wav"  # the server judges by the bytes anyway


def audio_data_url(audio: AudioInput, mime: str | None = None) -> str:
    """MiMo's `input_audio.data`: `data:audio/wav;base64,...` from a path, bytes or file."""
    clip = read_audio(audio, mime)
    return f"data:{clip.mime};base64,{base64.b64encode(clip.data).decode()}"


def mimo_request(
    audio: AudioInput | Sequence[AudioInput],
    *,
    model: str = MIMO_MODEL,
    language: str = "auto",
    prompt: str | None = None,
    hotwords: str | Sequence[str] | None = None,
    context: str | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """The JSON body of a MiMo `mimo-v2.5-asr` chat completion. Several clips are transcribed
    in order and joined with a space; `context` is a text part that biases decoding."""
    # A str is a Sequence too: only lists and tuples mean several clips.
    clips = list(audio) if isinstance(audio, list | tuple) else [cast(AudioInput, audio)]
    content: list[dict[str, Any]] = []
    if context:
        content.append({"type": "text", "text": context})
    content += [
        {"type": "input_audio", "input_audio": {"data": audio_data_url(clip)}} for clip in clips
    ]
    options: dict[str, Any] = {"language": language}
    if prompt:
        options["prompt"] = prompt
    if hotwords:
        options["hotwords"] = [hotwords] if isinstance(hotwords, str) else list(hotwords)
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "asr_options": options,
        "stream": stream,
    }


def mimo_openai_kwargs(audio: AudioInput | Sequence[AudioInput], **options: Any) -> dict[str, Any]:
    """Arguments for the `openai` SDK's `chat.completions.create`, with `asr_options` passed
    through `extra_body`: `sdk.chat.completions.create(**mimo_openai_kwargs("a.wav"))`."""
    body = mimo_request(audio, **options)
    return {
        "model": body["model"],
        "messages": body["messages"],
        "stream": body["stream"],
        "extra_body": {"asr_options": body["asr_options"]},
    }


def _audio_form(
    audio: AudioInput,
    *,
    model: str | None,
    language: str | None,
    prompt: str | None,
    hotwords: str | Sequence[str] | None,
    response_format: str,
    temperature: float | None,
    timestamp_granularities: Sequence[str] | None,
    stream: bool,
) -> tuple[list[tuple[str, str]], dict[str, tuple[str, bytes, str]]]:
    clip = read_audio(audio)
    fields: list[tuple[str, str]] = [("response_format", response_format)]
    if model:
        fields.append(("model", model))
    if language and language != "auto":
        fields.append(("language", language))
    if prompt:
        fields.append(("prompt", prompt))
    if hotwords:
        fields.append(("hotwords", hotwords if isinstance(hotwords, str) else ", ".join(hotwords)))
    if temperature is not None:
        fields.append(("temperature", str(temperature)))
    for granularity in timestamp_granularities or ():
        fields.append(("timestamp_granularities[]", granularity))
    if stream:
        fields.append(("stream", "true"))
    return fields, {"file": (clip.name, clip.data, clip.mime)}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = response.text
    raise HarkenAPIError.from_body(body, response.status_code)


def _audio_result(response: httpx.Response) -> Transcript:
    _check(response)
    if not response.headers.get("content-type", "").startswith("application/json"):
        return Transcript(response.text, None, response.text)
    body = response.json()
    return Transcript(
        body.get("text", ""), body.get("usage"), body, language=body.get("language"),
        duration=body.get("duration"), segments=body.get("segments"), words=body.get("words"),
    )  # fmt: skip


def _chat_result(response: httpx.Response) -> Transcript:
    _check(response)
    body = response.json()
    return Transcript(body["choices"][0]["message"]["content"] or "", body.get("usage"), body)


# --- Server-Sent Events
def _sse_payload(line: str) -> dict[str, Any] | None:
    """The JSON of one `data:` line; None for other lines and `[DONE]`."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    payload = json.loads(data)
    if isinstance(payload, dict) and "error" in payload:
        raise HarkenAPIError.from_body(payload, None)
    return payload if isinstance(payload, dict) else None


class _StreamState:
    """Turns events of either dialect into text deltas, and remembers the text and usage."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.final_text: str | None = None

    def feed(self, event: dict[str, Any]) -> str:
        if event.get("usage"):
            self.usage = event["usage"]
        kind = event.get("type")
        if kind == "transcript.text.delta":
            delta = str(event.get("delta") or "")
        elif kind == "transcript.text.done":
            self.final_text = str(event.get("text") or "")
            delta = ""
        else:
            choices = event.get("choices") or []
            delta = (choices[0].get("delta") or {}).get("content") or "" if choices else ""
        if delta:
            self.parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        return self.final_text if self.final_text is not None else "".join(self.parts)


class _Stream:
    """What both stream classes share: the text and usage, complete once the stream is read."""

    def __init__(self) -> None:
        self._state = _StreamState()

    def _delta(self, line: str) -> str:
        payload = _sse_payload(line)
        return self._state.feed(payload) if payload is not None else ""

    @property
    def text(self) -> str:
        return self._state.text

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._state.usage


class TranscriptStream(_Stream):
    """Text deltas as the server recognises them; `text` and `usage` are complete at the end."""

    def __init__(self, lines: Iterator[str], close: Callable[[], None]) -> None:
        super().__init__()
        self._lines = lines
        self._close = close

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._lines:
                if delta := self._delta(line):
                    yield delta
        finally:
            self.close()

    def close(self) -> None:
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTranscriptStream(_Stream):
    """`TranscriptStream` for `async for delta in stream`."""

    def __init__(self, lines: AsyncIterator[str], close: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._lines = lines
        self._close = close

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for line in self._lines:
                if delta := self._delta(line):
                    yield delta
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _base(url: str) -> str:
    """Accept the server root or its `/v1` base URL (what the openai SDK takes)."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


# --- the clients: one set of methods, sent by a sync or an async transport
@dataclass(frozen=True)
class _Call:
    """One request and how to read its answer (shared by `Client` and `AsyncClient`)."""

    method: str
    path: str
    options: dict[str, Any]
    parse: Callable[[httpx.Response], Any]
    stream: bool = False


def _audio_call(path: str, audio: AudioInput, *, stream: bool = False, **fields: Any) -> _Call:
    data, files = _audio_form(audio, stream=stream, **fields)
    return _Call("POST", path, {"data": _form(data), "files": files}, _audio_result, stream)


def _model_ids(response: httpx.Response) -> list[str]:
    _check(response)
    return [m["id"] for m in response.json()["data"]]


R = TypeVar("R")  # what a call gives: a Transcript, or an awaitable of one
S = TypeVar("S")  # a stream, or an awaitable of one
M = TypeVar("M")  # the model names, or an awaitable of them


class _Methods(Generic[R, S, M]):
    """The API's methods, written once; subclasses send a `_Call` their way."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float | httpx.Timeout) -> None:
        self.base_url = _base(base_url)
        # What either kind of httpx client is made with.
        self._http_options: dict[str, Any] = {
            "base_url": self.base_url, "headers": _headers(api_key), "timeout": timeout,
        }  # fmt: skip

    def _send(self, call: _Call) -> Any:
        raise NotImplementedError

    def models(self) -> M:
        """Every model name and alias the server answers to."""
        return self._send(_Call("GET", "/v1/models", {}, _model_ids))

    # MiMo chat completions
    def mimo_transcribe(self, audio: AudioInput | Sequence[AudioInput], **options: Any) -> R:
        """Transcribe with MiMo's chat dialect. Options: model, language, prompt, hotwords,
        context (see `mimo_request`)."""
        body = mimo_request(audio, **options)
        return self._send(_Call("POST", "/v1/chat/completions", {"json": body}, _chat_result))

    def mimo_transcribe_stream(self, audio: AudioInput | Sequence[AudioInput], **options: Any) -> S:
        """The same, as text deltas while the server recognises them."""
        body = mimo_request(audio, stream=True, **options)
        return self._send(_Call("POST", "/v1/chat/completions", {"json": body}, _check, True))

    # OpenAI audio
    def transcribe(
        self,
        audio: AudioInput,
        *,
        model: str | None = None,
        language: str | None = None,
        prompt: str | None = None,
        hotwords: str | Sequence[str] | None = None,
        response_format: ResponseFormat = "json",
        temperature: float | None = None,
        timestamp_granularities: Sequence[str] | None = None,
    ) -> R:
        """`POST /v1/audio/transcriptions`; with `verbose_json` the result carries the
        language, duration, segments and (with `timestamp_granularities=["word"]`) words."""
        return self._send(
            _audio_call(
                "/v1/audio/transcriptions", audio, model=model, language=language, prompt=prompt,
                hotwords=hotwords, response_format=response_format, temperature=temperature,
                timestamp_granularities=timestamp_granularities,
            )
        )  # fmt: skip

    def transcribe_stream(
        self,
        audio: AudioInput,
        *,
        model: str | None = None,
        language: str | None = None,
        prompt: str | None = None,
        hotwords: str | Sequence[str] | None = None,
    ) -> S:
        """`POST /v1/audio/transcriptions` with `stream=true`: text deltas as recognised."""
        return self._send(
            _audio_call(
                "/v1/audio/transcriptions", audio, stream=True, model=model, language=language,
                prompt=prompt, hotwords=hotwords, response_format="json", temperature=None,
                timestamp_granularities=None,
            )
        )  # fmt: skip

    def translate(
        self,
        audio: AudioInput,
        *,
        model: str | None = None,
        prompt: str | None = None,
        response_format: ResponseFormat = "json",
    ) -> R:
        """`POST /v1/audio/translations`: English text from speech in any language."""
        return self._send(
            _audio_call(
                "/v1/audio/translations", audio, model=model, language=None, prompt=prompt,
                hotwords=None, response_format=response_format, temperature=None,
                timestamp_granularities=None,
            )
        )  # fmt: skip


class Client(_Methods[Transcript, TranscriptStream, list[str]]):
    """Synchronous client. `base_url` is the server root (`http://host:8000`) or its `/v1`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = http or httpx.Client(**self._http_options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _Call) -> Any:
        request = self._http.build_request(call.method, call.path, **call.options)
        response = self._http.send(request, stream=call.stream)
        if not call.stream:
            return call.parse(response)
        if not response.is_success:
            response.read()
            response.close()
            _check(response)
        return TranscriptStream(response.iter_lines(), response.close)


class AsyncClient(
    _Methods[Awaitable[Transcript], Awaitable[AsyncTranscriptStream], Awaitable[list[str]]]
):
    """Asynchronous client with the same methods as `Client`, awaited."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = http or httpx.AsyncClient(**self._http_options)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> Any:
        request = self._http.build_request(call.method, call.path, **call.options)
        response = await self._http.send(request, stream=call.stream)
        if not call.stream:
            return call.parse(response)
        if not response.is_success:
            await response.aread()
            await response.aclose()
            _check(response)
        return AsyncTranscriptStream(response.aiter_lines(), response.aclose)


def _form(fields: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """httpx's form data: repeated names (timestamp_granularities[]) become lists."""
    form: dict[str, str | list[str]] = {}
    for name, value in fields:
        if name in form:
            existing = form[name]
            form[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            form[name] = value
    return form


__all__ = [
    "AsyncClient",
    "AsyncTranscriptStream",
    "Client",
    "HarkenAPIError",
    "Transcript",
    "TranscriptStream",
    "audio_data_url",
    "mimo_openai_kwargs",
    "mimo_request",
]
