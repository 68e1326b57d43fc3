"""A remote recogniser behind the Transcriber interface: MiMo's chat API, OpenAI's chat
`input_audio` parts, or OpenAI's audio API, called with httpx.

Audio that fits one call is sent whole, without VAD: the upstream decides what is speech.
Longer audio (over the upstream's body cap, or over `max_piece_seconds`) is cut at pauses by the
same VAD planning as local models (`plan_pieces`); several pieces are in flight at once (at most
`concurrency` calls, shared by every request for the model) and their segments come back in
order, each moved to its piece's place in the recording. An upstream that answers only text
gives one segment per piece, spanning the speech in it, so subtitles still have times.

Calls run on an event loop of the transcriber's own (one thread): a job whose client left
cancels its calls in flight, which closes their connections, so the upstream stops as well.
429, 5xx, timeouts and dropped connections are retried with jittered exponential backoff,
honouring Retry-After, a bounded number of times; then `UpstreamFailure` says what went wrong.
The key is sent only in the upstream's own header and never appears in a message.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import concurrent.futures
import dataclasses
import email.utils
import io
import logging
import random
import re
import threading
import time
import wave
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np

from harken.engine.batching import Cancelled, current_cancel_event
from harken.engine.script import convert_segment, converts
from harken.engine.segmentation import SAMPLE_RATE, Piece, SegmentationOptions, plan_pieces
from harken.engine.types import (
    Segment,
    Transcription,
    TranscriptionInfo,
    TranscriptionOptions,
    Word,
)

log = logging.getLogger(__name__)

Dialect = Literal["mimo-chat", "openai-chat", "openai-audio"]
# error: a bad or unreadable answer (502); unavailable: unreachable or overloaded (503);
# timeout (504); rejected: the upstream refused the request itself (its 4xx, `status`).
FailureKind = Literal["error", "unavailable", "timeout", "rejected"]

# Bytes of a request besides the audio (JSON or multipart framing, the WAV header).
_ENVELOPE_BYTES = 4 * 1024
_BYTES_PER_SECOND = SAMPLE_RATE * 2  # 16-bit mono WAV
_POLL_SECONDS = 0.05  # how soon a waiting job notices that it was cancelled
# Upstream call latency buckets (seconds), for the metrics.
LATENCY_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


@dataclass(frozen=True)
class UpstreamConfig:
    """Where the upstream is, how it is called, and how hard harken tries."""

    url: str  # base URL, e.g. https://api.example.com/v1
    dialect: Dialect
    model: str  # the name the upstream expects
    api_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    timeout: float = 300.0  # one call, all of it
    concurrency: int = 4
    retries: int = 3
    backoff: float = 0.5
    max_retry_wait: float = 30.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_piece_seconds: float = 30.0
    timestamps: bool = True  # openai-audio: verbose_json rather than json

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc or self.url

    @property
    def piece_seconds(self) -> float:
        """The longest audio one call carries: the window, or what fits in the body cap."""
        per_second = _BYTES_PER_SECOND * (4 / 3 if self.dialect != "openai-audio" else 1)
        fits = (self.max_body_bytes - _ENVELOPE_BYTES) / per_second
        return min(self.max_piece_seconds, fits)


class UpstreamFailure(Exception):
    """An upstream call failed for good (retries spent, or not worth retrying)."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


class _Retry(Exception):
    """One attempt failed in a way worth another try."""

    def __init__(self, failure: UpstreamFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class UpstreamStats:
    """Counts of calls to one upstream, read by the metrics at scrape time."""

    host: str
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    retries: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BOUNDS))
    latency_sum: float = 0.0
    latency_count: int = 0
    latency_bounds: tuple[float, ...] = LATENCY_BOUNDS
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def call(self, outcome: str, seconds: float) -> None:
        """One attempt: `outcome` is the HTTP status, or timeout / connection."""
        with self._lock:
            self.calls[outcome] += 1
            self.latency_sum += seconds
            self.latency_count += 1
            index = bisect.bisect_left(LATENCY_BOUNDS, seconds)
            if index < len(self.latency_counts):
                self.latency_counts[index] += 1

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def failed(self, kind: str) -> None:
        with self._lock:
            self.failures[kind] += 1


@dataclass(frozen=True)
class _Answer:
    text: str
    language: str | None  # an ISO code where the upstream said
    segments: list[Segment] | None  # with times inside the audio sent; None: text only


class UpstreamTranscriber:
    """One model name served by a remote endpoint. Thread-safe: every call goes through the
    transcriber's own event loop."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        *,
        language_names: Mapping[str, str],
        languages: frozenset[str] | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.multilingual = True
        self.max_concurrency = config.concurrency
        self.parallel_windows = config.concurrency
        self.upstream_stats = UpstreamStats(config.host)
        self._names = dict(language_names)  # code → English name
        self._codes = {n: c for c, n in self._names.items()}
        self._languages = languages if languages is not None else frozenset(self._names)
        self._count_tokens = count_tokens
        # Nothing is contacted here: the client connects on the first call.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"harken-upstream-{name}", daemon=True
        )
        self._thread.start()
        self._client = self._on_loop(self._make_client()).result()

    async def _make_client(self) -> httpx.AsyncClient:
        self._slots = asyncio.Semaphore(self.config.concurrency)
        timeout = httpx.Timeout(self.config.timeout, connect=self.config.connect_timeout)
        limits = httpx.Limits(max_connections=self.config.concurrency)
        return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)

    def _on_loop(self, coroutine: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._on_loop(self._client.aclose()).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # --- the Transcriber interface
    def supported_languages(self) -> frozenset[str]:
        return self._languages

    def count_tokens(self, text: str) -> int:
        if self._count_tokens is not None:
            return self._count_tokens(text)
        return len(text.split())

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcription:
        """One call for `audio` as it is, however long (no cutting)."""
        piece = Piece(0, int(audio.shape[0]))
        cancelled = current_cancel_event()
        call = self._on_loop(self._call(_pcm16(audio), options))
        answer = self._wait(call, lambda: cancelled is not None and cancelled.is_set())
        info = self._info(answer, options, audio.shape[0] / SAMPLE_RATE)
        return Transcription(info=info, segments=iter(self._placed(answer, piece)))

    def transcribe_long(
        self,
        audio: np.ndarray,
        options: TranscriptionOptions,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        on_piece: Callable[[Piece], None] | None = None,
    ) -> Transcription:
        """Audio of any length: in one call if it fits, else in pieces cut at pauses, several
        in flight at once (the first alone). Returns once the first piece is answered;
        the rest are read as the segments are consumed. A cancelled job (`should_stop`, or the
        cancel scope of the thread) cancels its calls in flight."""
        if options.task == "translate" and self.config.dialect != "openai-audio":
            raise UpstreamFailure(
                "rejected",
                f"The model {self.name!r} is served by a chat endpoint, which only transcribes; "
                "use a model served through an audio endpoint to translate.",
                status=400,
            )
        cancelled = current_cancel_event()

        def stop() -> bool:
            return should_stop() or (cancelled is not None and cancelled.is_set())

        duration = audio.shape[0] / SAMPLE_RATE
        pieces = self._pieces(audio, options)
        pending: collections.deque[tuple[Piece, concurrent.futures.Future[_Answer]]]
        pending = collections.deque()

        def fill(parallel: int = self.parallel_windows) -> None:
            while len(pending) < parallel and not stop():
                piece = next(pieces, None)
                if piece is None:
                    return
                if on_piece is not None:
                    on_piece(piece)
                samples = _pcm16(piece.samples(audio))
                pending.append((piece, self._on_loop(self._call(samples, options))))

        def cancel_all() -> None:
            for _, future in pending:
                future.cancel()

        try:
            fill(1)  # the first piece alone, so that the first text is not held back
            if not pending:
                language = options.language or "en"
                info = TranscriptionInfo(language, 1.0 if options.language else 0.0, duration)
                return Transcription(info=info, segments=iter(()))
            piece, future = pending.popleft()
            first = self._wait(future, stop)
        except BaseException:
            cancel_all()
            raise
        info = self._info(first, options, duration)
        script = options.chinese_script or "simplified"

        def segments() -> Iterator[Segment]:
            try:
                answer: _Answer | None = first
                current = piece
                while answer is not None:
                    for segment in self._placed(answer, current):
                        if converts(info.language, script):
                            segment = convert_segment(segment, script)
                        yield segment
                    fill()
                    answer = None
                    if pending:
                        current, future = pending.popleft()
                        answer = self._wait(future, stop)
            finally:
                cancel_all()

        return Transcription(info=info, segments=_numbered(segments()))

    # --- pieces
    def _pieces(self, audio: np.ndarray, options: TranscriptionOptions) -> Iterator[Piece]:
        total = int(audio.shape[0])
        seconds = self.config.piece_seconds
        if total <= seconds * SAMPLE_RATE:
            return iter((Piece(0, total),))
        segmentation = dataclasses.replace(
            options.segmentation or SegmentationOptions(),
            enabled=True,  # cutting is needed to fit the upstream, whatever the request asked
            max_piece_seconds=seconds,
            min_audio_seconds=seconds,
        )
        return plan_pieces(audio, segmentation)

    def _wait(
        self, future: concurrent.futures.Future[_Answer], stop: Callable[[], bool]
    ) -> _Answer:
        while True:
            try:
                return future.result(timeout=_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                if stop():
                    future.cancel()
                    raise Cancelled() from None

    def _info(
        self, answer: _Answer, options: TranscriptionOptions, duration: float
    ) -> TranscriptionInfo:
        if options.language:
            return TranscriptionInfo(options.language, 1.0, duration)
        if answer.language:
            return TranscriptionInfo(answer.language, 1.0, duration)
        # An upstream that answers only text does not say; Chinese characters say Mandarin.
        language = "zh" if _CJK.search(answer.text) else "en"
        return TranscriptionInfo(language, 0.0, duration)

    def _placed(self, answer: _Answer, piece: Piece) -> list[Segment]:
        """The answer's segments with times in the recording (an answer of text alone: one
        segment over the speech of the piece)."""
        segments = answer.segments
        if segments is None:
            text = answer.text.strip()
            if not text:
                return []
            heard = sorted((*piece.local_speech(), *piece.local_sound()))
            first, last = (heard[0][0], heard[-1][1]) if heard else (0, piece.end - piece.start)
            segments = [
                Segment(id=0, seek=0, start=first / SAMPLE_RATE, end=last / SAMPLE_RATE, text=text)
            ]
        clock = _Clock(piece)
        placed = []
        for segment in segments:
            text = segment.text
            if text.strip() and not text[:1].isspace() and not _CJK.match(text.strip()):
                text = " " + text  # pieces join with a space, as Whisper's segments do
            words = segment.words
            if words is not None:
                words = tuple(
                    dataclasses.replace(w, start=clock.at(w.start), end=clock.at(w.end))
                    for w in words
                )
            start = clock.at(segment.start)
            placed.append(
                dataclasses.replace(
                    segment, text=text, start=start, end=max(start, clock.at(segment.end)),
                    seek=round(start * 100), words=words,
                )
            )  # fmt: skip
        return placed

    # --- one call, with retries
    async def _call(self, samples: np.ndarray, options: TranscriptionOptions) -> _Answer:
        wav = _wav(samples)
        attempt = 0
        while True:
            try:
                return await self._attempt(wav, options)
            except _Retry as retry:
                failure = retry.failure
                wait = self._backoff(attempt, failure.retry_after)
                if attempt >= self.config.retries or wait is None:
                    self.upstream_stats.failed(failure.kind)
                    raise failure from None
                attempt += 1
                self.upstream_stats.retried()
                log.warning(
                    "upstream %s: %s; retry %d of %d in %.1f s", self.config.host,
                    failure.message, attempt, self.config.retries, wait,
                )  # fmt: skip
                await asyncio.sleep(wait)
            except UpstreamFailure as failure:
                self.upstream_stats.failed(failure.kind)
                raise

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt (None: longer than harken waits)."""
        wait = random.uniform(0, self.config.backoff * 2**attempt)  # full jitter
        if retry_after is not None:
            if retry_after > self.config.max_retry_wait:
                return None
            wait = max(wait, retry_after)
        return min(wait, self.config.max_retry_wait)

    async def _attempt(self, wav: bytes, options: TranscriptionOptions) -> _Answer:
        host = self.config.host
        started = time.monotonic()
        async with self._slots:
            try:
                async with asyncio.timeout(self.config.timeout):
                    response = await self._send(wav, options)
            except (TimeoutError, httpx.TimeoutException):
                self.upstream_stats.call("timeout", time.monotonic() - started)
                raise _Retry(
                    UpstreamFailure(
                        "timeout",
                        f"The upstream model at {host} did not answer within "
                        f"{self.config.timeout:g} s.",
                    )
                ) from None
            except httpx.TransportError as exc:
                self.upstream_stats.call("connection", time.monotonic() - started)
                # Refused or unreachable: unavailable; dropped mid-answer: a broken answer.
                refused = isinstance(exc, httpx.ConnectError)
                kind: FailureKind = "unavailable" if refused else "error"
                raise _Retry(
                    UpstreamFailure(
                        kind,
                        f"The connection to the upstream model at {host} failed "
                        f"({type(exc).__name__}).",
                    )
                ) from None
        status = response.status_code
        self.upstream_stats.call(str(status), time.monotonic() - started)
        if status == 200:
            return self._parse(response)
        message = _upstream_message(response)
        if self.config.api_key:  # an upstream may quote the key it was sent
            message = message.replace(self.config.api_key, "***")
        if status == 429 or status >= 500:
            kind = "unavailable" if status in (429, 503) else "error"
            raise _Retry(
                UpstreamFailure(
                    kind,
                    f"The upstream model at {host} answered {status}: {message}",
                    status=status,
                    retry_after=_retry_after(response),
                )
            )
        raise UpstreamFailure(
            "rejected", f"The upstream model at {host} refused the request: {message}",
            status=status,
        )  # fmt: skip

    async def _send(self, wav: bytes, options: TranscriptionOptions) -> httpx.Response:
        config = self.config
        base = config.url.rstrip("/")
        headers = {}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
            if config.dialect == "mimo-chat":
                headers["api-key"] = config.api_key
        if config.dialect == "openai-audio":
            route = "translations" if options.task == "translate" else "transcriptions"
            return await self._client.post(
                f"{base}/audio/{route}",
                headers=headers,
                data=self._form(options),
                files={"file": ("audio.wav", wav, "audio/wav")},
            )
        return await self._client.post(
            f"{base}/chat/completions", headers=headers, json=self._chat_body(wav, options)
        )

    def _form(self, options: TranscriptionOptions) -> dict[str, Any]:
        form: dict[str, Any] = {
            "model": self.config.model,
            "response_format": "verbose_json" if self.config.timestamps else "json",
        }
        if options.language and options.task == "transcribe":
            form["language"] = options.language
        if options.prompt:
            form["prompt"] = options.prompt
        if options.temperature is not None:
            form["temperature"] = str(options.temperature)
        if options.word_timestamps and self.config.timestamps:
            form["timestamp_granularities[]"] = ["segment", "word"]
        return form

    def _chat_body(self, wav: bytes, options: TranscriptionOptions) -> dict[str, Any]:
        payload = base64.b64encode(wav).decode()
        audio: dict[str, Any]
        if self.config.dialect == "mimo-chat":
            audio = {"data": f"data:audio/wav;base64,{payload}"}
        else:
            audio = {"data": payload, "format": "wav"}
        content: list[dict[str, Any]] = []
        if options.prompt:
            content.append({"type": "text", "text": options.prompt})
        content.append({"type": "input_audio", "input_audio": audio})
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": content}],
            "stream": False,
        }
        if self.config.dialect == "mimo-chat":
            asr: dict[str, Any] = {"language": options.language or "auto"}
            if options.hotwords:
                asr["hotwords"] = options.hotwords
            body["asr_options"] = asr
        if options.temperature is not None:
            body["temperature"] = options.temperature
        return body

    # --- answers
    def _parse(self, response: httpx.Response) -> _Answer:
        try:
            body = response.json()
            if self.config.dialect == "openai-audio":
                return self._audio_answer(body)
            content = body["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not text")
            return _Answer(content, None, None)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamFailure(
                "error",
                f"The upstream model at {self.config.host} sent an answer that is not the "
                f"expected {self.config.dialect} JSON ({type(exc).__name__}).",
            ) from None

    def _audio_answer(self, body: dict[str, Any]) -> _Answer:
        text = body["text"]
        if not isinstance(text, str):
            raise TypeError("text is not text")
        language = body.get("language")
        code = None
        if isinstance(language, str):
            key = language.strip().lower()
            code = key if key in self._names else self._codes.get(key)
        raw = body.get("segments")
        if not isinstance(raw, list):
            return _Answer(text, code, None)
        words = [
            Word(float(w["start"]), float(w["end"]), str(w["word"]), float(w.get("probability", 1)))
            for w in body.get("words") or []
        ]
        starts = [float(s["start"]) for s in raw]
        # Each word goes to the last segment that starts at or before it.
        owned: list[list[Word]] = [[] for _ in raw]
        for w in words:
            owned[max(0, bisect.bisect_right(starts, w.start) - 1)].append(w)
        segments = [
            Segment(
                id=index, seek=int(s.get("seek", 0)), start=float(s["start"]),
                end=float(s["end"]), text=str(s["text"]),
                avg_logprob=float(s.get("avg_logprob", 0.0)),
                no_speech_prob=float(s.get("no_speech_prob", 0.0)),
                compression_ratio=float(s.get("compression_ratio", 0.0)),
                temperature=float(s.get("temperature") or 0.0),
                words=tuple(owned[index]) if words else None,
            )
            for index, s in enumerate(raw)
        ]  # fmt: skip
        return _Answer(text, code, segments)


class _Clock:
    """Seconds of the audio a piece sent (its parts joined) → seconds of the recording."""

    def __init__(self, piece: Piece) -> None:
        self.parts = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in piece.read]
        self.begins = list(np.cumsum([0.0] + [b - a for a, b in self.parts[:-1]]))

    def at(self, t: float) -> float:
        index = max(0, bisect.bisect_right(self.begins, t) - 1)
        a, b = self.parts[index]
        return round(min(b, a + max(0.0, t - self.begins[index])), 3)


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def _numbered(segments: Iterator[Segment]) -> Iterator[Segment]:
    for index, segment in enumerate(segments):
        yield dataclasses.replace(segment, id=index)


def _pcm16(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


def _wav(samples: np.ndarray) -> bytes:
    """16 kHz mono 16-bit WAV: every upstream reads it, and it costs no encoding time."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return out.getvalue()


def _upstream_message(response: httpx.Response) -> str:
    """The upstream's own error message (its error body's, or the start of its text)."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message.strip():
            return message.strip()[:500]
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            return str(body["detail"])[:500]
    except ValueError:
        pass
    text = response.text.strip()
    return text[:200] if text else f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, given as seconds or as an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
