"""Live transcription: one session's audio, its turn detection and its incremental decoder.

Audio arrives in pieces. With server VAD (Silero, as for long files) the session finds where
speech starts and stops; an utterance is the speech between, with `prefix_padding_ms` of audio
before it. While the person speaks, the growing utterance is decoded again at a bounded rate
(a partial decode: a draft, the model's quick reading of a short window), and words are sent
only once three decodes in a row agree on them (LocalAgreement), each decode prompted with what
the session heard before: what is sent is never taken back, so deltas only ever append. When
speech stops, the utterance is read as a file is (the same path and quality as POST
/v1/audio/transcriptions); the sent words stay, and the final text's words after them (found
by aligning the two) complete the transcript, so the deltas always join to it. That read
starts 200 ms into the silence that may end the utterance and is dropped if speech resumes.

Partial decodes are a luxury: skipped while the server has a queue or any session's final is
being decoded, and never more than `PartialSlots.limit` at once server-wide. Finals are never
skipped; they run in order, one utterance at a time per session, through the same scheduler and
batcher as file requests. An utterance is cut at its quietest moment before Whisper's 30-second
window is full, so its cost stays bounded and lag does not grow over a long session.

Without turn detection the client commits the buffer itself; the buffer is then transcribed
as a file is (long audio cut at pauses), its text sent as deltas as it is decoded.

The session speaks no dialect: it puts dialect-free events on `events`; `api/realtime.py`
turns them into the Realtime API's shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harken.audio_stream import Encoding, StreamDecoder
from harken.engine import SAMPLE_RATE, Segment, TranscriptionOptions
from harken.engine.batching import Cancelled, cancel_scope
from harken.engine.script import UNSPACED, convert_text, converts
from harken.engine.segmentation import SpeechProbabilities, as_float32
from harken.errors import HarkenError, InvalidRequest, RateLimited, ServerError
from harken.service.transcription import LoadedModel, TranscriptionService

log = logging.getLogger(__name__)

_WINDOW = SpeechProbabilities.WINDOW
# Partial decodes: the first once this much of the utterance is in (its prefix padding
# included), then after each further `_PARTIAL_STEP` of audio, or the last decode's own time if
# longer (a slow machine decodes less often; one session never keeps a core busy with guesses).
# Until an utterance's first words are sent the step is `_FIRST_WORDS_STEP`. Measured on 14
# clips (tiny.en, one session, 2 cores): onset → first delta p50 1.73 s with the first decode at
# 0.8 s and steps of 0.4 s; 1.41 s at 0.6 s and 0.2 s, WER no worse. With drafts decoded back to
# back until the first words, whisper-base: 1.38 s (2.64 s with full-window decodes).
_FIRST_PARTIAL_SECONDS = 0.6
_PARTIAL_STEP_SECONDS = 0.4
_FIRST_WORDS_STEP_SECONDS = 0.2
_FIRST_WORDS_SECONDS = 3.0
# Words are sent once this many decodes in a row agree on them, and not while they are among
# a decode's last `_HELD_WORDS`. Measured on 14 clips (tiny.en, a decode every 0.4 s): two
# decodes agreeing put the transcripts 2.8 points of WER behind a fresh decode's, three 0.4.
_AGREEING = 3
_HELD_WORDS = 2
# A partial decode is cut where it starts repeating a run of up to this many words.
_REPEAT_WORDS = 8
# Partial decodes are drafts read greedily: the agreement above checks them, and at a third of
# a full decode's cost they come often enough to send the first words early (see README).
_DRAFT_BEAM = 1
# An utterance is cut before Whisper's window is full, at its quietest moment in the last
# `_CUT_SEARCH_SECONDS` (smoothed over `_CUT_SMOOTH` VAD windows).
_MAX_UTTERANCE_SECONDS = 28.0
_CUT_SEARCH_SECONDS = 10.0
_CUT_SMOOTH = 5
# A final reads its utterance up to this much after the speech ends (not the whole silence that
# ends it), and starts once that much silence is in: if the silence goes on to end the
# utterance, its transcript is ready sooner by the rest of `silence_duration_ms`; if speech
# resumes, that read is dropped. Only while the server has no queue.
_FINAL_TAIL_SECONDS = 0.2
# Without turn detection the buffer waits for the client's commit: at most this much of it.
_MAX_BUFFER_SECONDS = 15 * 60.0
_MIN_COMMIT_SECONDS = 0.1  # OpenAI's minimum for a commit
# Partial decodes get the session's latest transcripts as Whisper's prompt (its previous-text
# conditioning, which a file's later windows get too), after the client's own prompt: the first
# words of an utterance, read from a second of audio, are read right more often ("Had he
# married" where alone it was "How do you marry", three decodes in a row). Finals get only the
# client's prompt: with the session's text they went on to repeat its sentences after the
# speech ended, and the errors fed the next prompt (WER 16% and 42% in two runs, against 6%).
_CONTEXT_CHARACTERS = 400


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD's settings (OpenAI's `server_vad`)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class LiveOptions:
    model: str | None = None  # a catalog name; None: the server's default model
    language: str | None = None  # None: detect
    prompt: str | None = None
    encoding: Encoding = "pcm16"
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)  # None: manual
    logprobs: bool = False


# --- what a session tells its client (the API layer gives them their wire shapes)
@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class Committed:
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True)
class Delta:
    item_id: str
    delta: str


@dataclass(frozen=True)
class Completed:
    item_id: str
    transcript: str
    seconds: float  # the utterance's audio
    logprobs: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True)
class Failed:
    item_id: str
    error: HarkenError


@dataclass(frozen=True)
class Cleared:
    pass


LiveEvent = SpeechStarted | SpeechStopped | Committed | Delta | Completed | Failed | Cleared


@dataclass
class _ReadAhead:
    """An utterance's final read while the silence that may end it goes on."""

    utterance: _Utterance
    end: int  # session sample where its audio ends
    task: asyncio.Task[list[Segment]]


def new_item_id() -> str:
    return f"item_{uuid.uuid4().hex[:24]}"


class PartialSlots:
    """How many partial decodes may run at once, across every session of a server: none while
    any session's final transcription is under way (finals first), else up to `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.taken = 0
        self.finals_running = 0

    def take(self) -> bool:
        if self.taken >= self.limit or self.finals_running:
            return False
        self.taken += 1
        return True

    def give_back(self) -> None:
        self.taken -= 1


@dataclass
class _Utterance:
    item_id: str
    start: int  # session sample where its audio begins (the prefix padding included)
    speech_start: int
    # Words sent, as the model wrote them (each with its leading space).
    committed: list[str] = field(default_factory=list)
    recent: list[list[str]] = field(default_factory=list)  # the last partial decodes' words
    decoded_until: int = 0  # session sample the last partial decode read up to
    final: bool = False

    @property
    def sent(self) -> str:
        return "".join(self.committed).lstrip()


class LiveSession:
    """One live transcription session. Not thread-safe: call it from the event loop, one call
    at a time (the WebSocket's reader does)."""

    def __init__(
        self,
        service: TranscriptionService,
        model: LoadedModel,
        options: LiveOptions,
        partial_slots: PartialSlots,
    ) -> None:
        self.service = service
        self.model = model
        self.options = options
        self.partial_slots = partial_slots
        self.events: asyncio.Queue[LiveEvent] = asyncio.Queue()
        self._closed = False
        self._previous_item: str | None = None
        self._finals: asyncio.Queue[
            tuple[_Utterance, np.ndarray, asyncio.Task[list[Segment]] | None]
        ] = asyncio.Queue()
        self._ahead: _ReadAhead | None = None
        self._finals_pending = 0
        self._final_worker = asyncio.create_task(self._run_finals())
        self._partial: asyncio.Task[None] | None = None
        self._partial_cancel: threading.Event | None = None
        self._decode_seconds = 0.0  # the last partial decode's own time
        self._received = 0  # 16 kHz samples since the session began
        self._context = ""  # the session's latest transcripts, for the prompt
        self._reset_audio()

    @property
    def busy(self) -> bool:
        """An utterance is under way or a transcript is still to come."""
        return self._utterance is not None or self._finals_pending > 0

    # --- configuration
    def update(self, model: LoadedModel, options: LiveOptions) -> None:
        """New options; a new audio format or turn detection starts the buffer afresh."""
        restart = (
            options.encoding != self.options.encoding
            or options.turn_detection != self.options.turn_detection
        )
        self.model, self.options = model, options
        if restart:
            self._drop_utterance()
            self._reset_audio()

    def _reset_audio(self) -> None:
        self._decoder = StreamDecoder(self.options.encoding)
        self._vad = SpeechProbabilities() if self.options.turn_detection else None
        self._vad_origin = self._received  # session sample of the VAD's first window
        self._buffer: list[np.ndarray] = []
        self._buffer_start = self._received
        self._buffered = 0
        self._utterance: _Utterance | None = None
        self._probs: list[float] = []  # VAD probabilities of the utterance's windows
        self._silence_from: int | None = None

    # --- client events
    async def append(self, audio: bytes) -> None:
        samples, probs = await asyncio.to_thread(self._ingest, audio)
        self._received += samples.shape[0]
        if samples.shape[0]:
            self._buffer.append(samples)
            self._buffered += samples.shape[0]
        turn = self.options.turn_detection
        if turn is None:
            if self._buffered > _MAX_BUFFER_SECONDS * SAMPLE_RATE:
                self._buffer_tail(int(_MAX_BUFFER_SECONDS * SAMPLE_RATE))
                raise InvalidRequest(
                    f"The input audio buffer holds over {_MAX_BUFFER_SECONDS / 60:g} minutes "
                    "of uncommitted audio; its oldest audio was dropped. Commit more often.",
                    code="input_audio_buffer_too_long",
                )
            return
        self._follow_speech(probs, turn)
        self._maybe_partial()

    def _ingest(self, audio: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Decode and resample the piece, and read its speech probabilities (a worker thread)."""
        samples = self._decoder.decode(audio)
        probs = self._vad.feed(samples) if self._vad is not None else np.zeros(0, np.float32)
        return samples, probs

    async def commit(self) -> None:
        """The client ends the current utterance (or, without turn detection, the buffer)."""
        if self.options.turn_detection is not None:
            if self._utterance is None:
                raise _commit_empty(0.0)
            self._finish(self._received, stopped=False)
            return
        seconds = self._buffered / SAMPLE_RATE
        if seconds < _MIN_COMMIT_SECONDS:
            raise _commit_empty(seconds)
        audio = self._buffer_audio(self._buffer_start, self._received)
        self._buffer, self._buffered, self._buffer_start = [], 0, self._received
        utterance = _Utterance(new_item_id(), self._received - audio.shape[0], 0)
        self._commit(utterance, audio)

    async def clear(self) -> None:
        self._drop_utterance()
        self._buffer, self._buffered, self._buffer_start = [], 0, self._received
        self._probs, self._silence_from = [], None
        await self.events.put(Cleared())

    async def close(self) -> None:
        """Stop everything at once: model calls in flight stop before their next step (the
        final's job is closed as its task is cancelled; a partial's by its event)."""
        self._closed = True
        if self._partial_cancel is not None:
            self._partial_cancel.set()
        tasks: list[asyncio.Task[Any]] = [self._final_worker]
        tasks += [self._partial] if self._partial else []
        if self._ahead is not None:
            tasks.append(self._ahead.task)
            self._ahead = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # --- turn detection
    def _follow_speech(self, probs: np.ndarray, turn: TurnDetection) -> None:
        pad = int(turn.prefix_padding_ms * SAMPLE_RATE / 1000)
        silence = int(turn.silence_duration_ms * SAMPLE_RATE / 1000)
        negative = max(turn.threshold - 0.15, 0.01)
        first_window = (self._received - self._vad_origin) // _WINDOW - probs.shape[0]
        for index, prob in enumerate(probs.tolist()):
            position = self._vad_origin + (first_window + index) * _WINDOW
            end = position + _WINDOW
            utterance = self._utterance
            if utterance is None:
                if prob >= turn.threshold:
                    start = max(self._buffer_start, position - pad)
                    self._utterance = _Utterance(new_item_id(), start, position)
                    self._utterance.decoded_until = start
                    self._probs = [prob]
                    self._silence_from = None
                    self.events.put_nowait(SpeechStarted(self._utterance.item_id, _ms(position)))
                continue
            self._probs.append(prob)
            if prob >= turn.threshold:
                self._silence_from = None
                self._drop_read_ahead()  # speech goes on
            elif prob < negative and self._silence_from is None:
                self._silence_from = position
            if self._silence_from is not None and end - self._silence_from >= silence:
                self._finish(end, stopped=True, speech_end=self._silence_from)
            elif end - utterance.start >= _MAX_UTTERANCE_SECONDS * SAMPLE_RATE:
                self._cut(end)
            elif self._silence_from is not None:
                self._maybe_read_ahead(utterance, self._silence_from, end)
        if self._utterance is None:
            keep = pad + 2 * _WINDOW
            self._buffer_tail(keep)

    def _finish(self, end: int, *, stopped: bool, speech_end: int | None = None) -> None:
        utterance = self._utterance
        assert utterance is not None
        self._utterance = None
        self._stop_partial(utterance)
        if stopped:
            self.events.put_nowait(SpeechStopped(utterance.item_id, _ms(speech_end or end)))
            end = min(end, (speech_end or end) + _final_tail(self.options.turn_detection))
        ahead = self._ahead
        if ahead is not None and ahead.utterance is utterance and ahead.end == end:
            self._ahead = None  # read ahead of exactly this audio: it is the final
            self.service.scheduler.metrics.realtime_read_ahead.labels("used").inc()
        else:
            self._drop_read_ahead()
            ahead = None
        audio = self._buffer_audio(utterance.start, end)
        self._commit(utterance, audio, ahead.task if ahead is not None else None)
        pad = self.options.turn_detection.prefix_padding_ms if self.options.turn_detection else 0
        self._buffer_tail(self._received - end + int(pad * SAMPLE_RATE / 1000) + _WINDOW)
        self._probs, self._silence_from = [], None

    def _cut(self, end: int) -> None:
        """An utterance about to outgrow Whisper's window: end it at its quietest moment lately
        (a pause between words, if there was one) and go on with a new one from there."""
        utterance = self._utterance
        assert utterance is not None
        probs = np.asarray(self._probs, dtype=np.float32)
        windows = min(len(probs), int(_CUT_SEARCH_SECONDS * SAMPLE_RATE / _WINDOW))
        smooth = np.convolve(probs, np.ones(_CUT_SMOOTH) / _CUT_SMOOTH, mode="same")[-windows:]
        quietest = len(probs) - windows + int(np.argmin(smooth))
        cut = utterance.speech_start + quietest * _WINDOW + _WINDOW // 2
        cut = min(max(cut, utterance.start + SAMPLE_RATE), end)
        self._utterance = None
        self._stop_partial(utterance)
        self._drop_read_ahead()
        self.events.put_nowait(SpeechStopped(utterance.item_id, _ms(cut)))
        self._commit(utterance, self._buffer_audio(utterance.start, cut))
        following = _Utterance(new_item_id(), cut, cut)
        following.decoded_until = cut
        self._utterance = following
        self._probs = self._probs[quietest:]
        self._silence_from = None
        self.events.put_nowait(SpeechStarted(following.item_id, _ms(cut)))
        self._buffer_tail(self._received - cut)

    def _commit(
        self,
        utterance: _Utterance,
        audio: np.ndarray,
        ahead: asyncio.Task[list[Segment]] | None = None,
    ) -> None:
        utterance.final = True
        self.events.put_nowait(Committed(utterance.item_id, self._previous_item))
        self._previous_item = utterance.item_id
        self._finals_pending += 1
        self._finals.put_nowait((utterance, audio, ahead))

    def _maybe_read_ahead(self, utterance: _Utterance, speech_end: int, now: int) -> None:
        """Start reading the utterance's final while the silence that may end it goes on."""
        end = speech_end + _final_tail(self.options.turn_detection)
        if self._ahead is not None or now < end or self._finals_pending or self._closed:
            return
        scheduler = self.service.scheduler
        if scheduler.waiting or scheduler.running >= scheduler.max_active:
            return  # the server has a queue: no work that may be thrown away
        if self.service.shutting_down:
            return
        self._stop_partial_decode()
        task = asyncio.create_task(self._read(self._buffer_audio(utterance.start, end)))
        self._ahead = _ReadAhead(utterance, end, task)

    def _drop_read_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.task.cancel()
            self._ahead = None
            self.service.scheduler.metrics.realtime_read_ahead.labels("dropped").inc()

    def _drop_utterance(self) -> None:
        self._drop_read_ahead()
        if self._utterance is not None:
            self._stop_partial(self._utterance)
            self._utterance.final = True
            self._utterance = None

    # --- the audio kept: the utterance under way, or the padding that may precede the next
    def _buffer_audio(self, start: int, end: int) -> np.ndarray:
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.int16)
        self._buffer = [audio] if audio.shape[0] else []
        begin = max(0, start - self._buffer_start)
        return audio[begin : max(begin, end - self._buffer_start)].copy()

    def _buffer_tail(self, keep: int) -> None:
        """Keep only the last `keep` samples."""
        drop = self._buffered - max(0, keep)
        if drop <= 0:
            return
        audio = np.concatenate(self._buffer)[drop:] if self._buffer else np.zeros(0, np.int16)
        self._buffer = [audio] if audio.shape[0] else []
        self._buffered = audio.shape[0]
        self._buffer_start = self._received - self._buffered

    # --- partial decodes
    def _maybe_partial(self) -> None:
        utterance = self._utterance
        if (
            utterance is None
            or self._partial is not None
            or self._ahead is not None
            or self._finals_pending
            or self._closed
        ):
            return
        heard = self._received - utterance.start
        if heard < _FIRST_PARTIAL_SECONDS * SAMPLE_RATE:
            return
        # Until the first words are out (in an utterance's first seconds), decodes follow each
        # other; then no more often than they take (a slow machine decodes less often, one
        # session never keeps a core busy with guesses).
        if utterance.committed or heard > _FIRST_WORDS_SECONDS * SAMPLE_RATE:
            step = max(_PARTIAL_STEP_SECONDS, self._decode_seconds)
        else:
            step = _FIRST_WORDS_STEP_SECONDS
        if self._received - utterance.decoded_until < step * SAMPLE_RATE:
            return
        scheduler = self.service.scheduler
        if scheduler.waiting or scheduler.running >= scheduler.max_active:
            return  # the server has a queue: partial text can wait, finals and files cannot
        if self.service.shutting_down or not self.partial_slots.take():
            return
        utterance.decoded_until = self._received
        audio = self._buffer_audio(utterance.start, self._received)
        cancel = threading.Event()
        self._partial_cancel = cancel
        self._partial = asyncio.create_task(self._decode_partial(utterance, audio, cancel))
        # Called even when the task is cancelled before it starts: the slot always comes back.
        self._partial.add_done_callback(self._partial_done)

    def _partial_done(self, task: asyncio.Task[None]) -> None:
        self.partial_slots.give_back()
        if self._partial is task:
            self._partial = None
            self._partial_cancel = None
            if not task.cancelled():
                self._maybe_partial()  # the audio that came in meanwhile, without waiting for more

    async def _decode_partial(
        self, utterance: _Utterance, audio: np.ndarray, cancel: threading.Event
    ) -> None:
        started = time.monotonic()
        try:
            text = await self.service.scheduler.run(self._decode_partial_text, audio, cancel)
        except (Cancelled, RateLimited, HarkenError):
            return
        except Exception:
            log.exception("a partial decode failed")
            return
        spent = time.monotonic() - started
        self._decode_seconds = spent
        log.debug(
            "partial decode %.2f s of audio in %.2f s: %r",
            audio.shape[0] / SAMPLE_RATE,
            spent,
            text,
        )
        if utterance.final or cancel.is_set():
            return
        self._agree(utterance, _before_repeat(_words(text)))

    def _agree(self, utterance: _Utterance, words: list[str]) -> None:
        """LocalAgreement: send the words the last `_AGREEING` decodes agree on, past what was
        sent (found in each decode by aligning it with the sent words)."""
        utterance.recent = [*utterance.recent, words][-_AGREEING:]
        if len(utterance.recent) < _AGREEING:
            return
        tails = [_after(utterance.committed, decode) for decode in utterance.recent]
        new, earlier = tails[-1], tails[:-1]
        # The last words of a decode were read next to the end of the audio, where decodes
        # may all be wrong the same way ("am I" for "my" while "fellow" is cut): held back.
        limit = min([len(new) - _HELD_WORDS, *(len(tail) for tail in earlier)])
        agreed = 0
        while agreed < limit and all(_same(new[agreed], tail[agreed]) for tail in earlier):
            agreed += 1
        if not agreed:
            return
        sent = utterance.sent
        utterance.committed += new[:agreed]
        self.events.put_nowait(Delta(utterance.item_id, utterance.sent[len(sent) :]))

    def _stop_partial(self, utterance: _Utterance) -> None:
        utterance.final = True
        self._stop_partial_decode()

    def _stop_partial_decode(self) -> None:
        if self._partial_cancel is not None:
            self._partial_cancel.set()

    # --- finals, one after another
    async def _run_finals(self) -> None:
        while True:
            utterance, audio, ahead = await self._finals.get()
            self.partial_slots.finals_running += 1
            try:
                await self._final(utterance, audio, ahead)
            except asyncio.CancelledError:
                raise
            except Cancelled:
                return
            except HarkenError as error:
                self.events.put_nowait(Failed(utterance.item_id, error))
            except Exception:
                log.exception("a live transcription failed")
                self.events.put_nowait(
                    Failed(utterance.item_id, ServerError("The transcription failed."))
                )
            finally:
                self._finals_pending -= 1
                self.partial_slots.finals_running -= 1

    async def _final(
        self,
        utterance: _Utterance,
        audio: np.ndarray,
        ahead: asyncio.Task[list[Segment]] | None = None,
    ) -> None:
        """The utterance read as a file is (the same path, the same quality), or its read
        ahead. With turn detection, the words already sent stay and the text after them
        follows as one delta; without it, the text is sent as it is decoded."""
        live = self.options.turn_detection is not None
        words: list[str] = []
        logprobs: list[tuple[str, float]] = []
        async for segment in self._segments(audio, ahead):
            piece = segment.text if words else segment.text.lstrip()
            words += _words(piece)
            if piece and not live:
                self.events.put_nowait(Delta(utterance.item_id, piece))
            logprobs += [(w.word, _log(w.probability)) for w in segment.words or ()]
        if live:
            rest = _after(utterance.committed, words)
            if (
                rest
                and utterance.committed
                and not rest[0][:1].isspace()
                and _spaced(utterance.committed[-1], rest[0])
            ):
                rest[0] = " " + rest[0]
            transcript = ("".join(utterance.committed) + "".join(rest)).strip()
            if transcript[len(utterance.sent) :]:
                self.events.put_nowait(Delta(utterance.item_id, transcript[len(utterance.sent) :]))
        else:
            transcript = "".join(words).strip()
        self._context = _latest(f"{self._context} {transcript}", _CONTEXT_CHARACTERS)
        self.events.put_nowait(
            Completed(
                utterance.item_id,
                transcript,
                audio.shape[0] / SAMPLE_RATE,
                tuple(logprobs) if self.options.logprobs else None,
            )
        )

    def _final_options(self) -> TranscriptionOptions:
        return TranscriptionOptions(
            language=self.options.language,
            prompt=self.options.prompt,
            word_timestamps=self.options.logprobs,
        )

    async def _segments(
        self, audio: np.ndarray, ahead: asyncio.Task[list[Segment]] | None
    ) -> AsyncIterator[Segment]:
        if ahead is not None:
            for segment in await ahead:
                yield segment
            return
        job = await self._never_skipped_stream(audio, self._final_options())
        try:
            async for segment in job:
                yield segment
        finally:
            await job.aclose()

    async def _read(self, audio: np.ndarray) -> list[Segment]:
        """A final read ahead, whole."""
        return [segment async for segment in self._segments(audio, None)]

    async def _never_skipped_stream(self, audio: np.ndarray, options: TranscriptionOptions) -> Any:
        while True:
            try:
                return await self.service.transcribe(self.model, audio, options)
            except RateLimited as full:
                await asyncio.sleep(min(1.0, full.retry_after or 1) / 4)

    # --- decoding
    def _prompt(self) -> str | None:
        """The client's prompt first, then what the session heard last."""
        return " ".join(p for p in (self.options.prompt, self._context) if p) or None

    def _decode_partial_text(self, audio: np.ndarray, cancel: threading.Event) -> str:
        """A partial decode on a worker thread: a draft (the model's quick reading), greedy,
        no temperature fallback: a guess that the next decodes check, at a bounded cost.
        Mandarin in the script the final will have."""
        options = TranscriptionOptions(
            language=self.options.language,
            prompt=self._prompt(),
            temperature=0.0,
            beam_size=_DRAFT_BEAM,
            draft=True,
        )
        with cancel_scope(cancel):
            result = self.model.transcriber.transcribe(as_float32(audio), options)
            text = "".join(segment.text for segment in result.segments)
        script = self.service.settings.chinese_script
        return convert_text(text, script) if converts(result.info.language, script) else text


# In scripts written without spaces (`UNSPACED`) each character counts as a word, so their
# partial text is agreed on and sent piece by piece too. Words keep their spaces and marks here.
_WORD = re.compile(rf"\s*(?:[{UNSPACED}]|[^\s{UNSPACED}]+)")
_UNSPACED_CHARACTER = re.compile(rf"[{UNSPACED}]")


def _final_tail(turn: TurnDetection | None) -> int:
    """Samples of silence after the speech that a final reads."""
    silence = turn.silence_duration_ms / 1000 if turn is not None else _FINAL_TAIL_SECONDS
    return int(min(silence, _FINAL_TAIL_SECONDS) * SAMPLE_RATE)


def _words(text: str) -> list[str]:
    """Words as the model wrote them, each with its leading space (joined, the text again); in
    Chinese and Japanese, characters."""
    return _WORD.findall(text)


def _spaced(left: str, right: str) -> bool:
    """Whether a space goes between two words found apart (none next to an unspaced script)."""
    return not (_UNSPACED_CHARACTER.fullmatch(left[-1:]) or _UNSPACED_CHARACTER.match(right))


def _before_repeat(words: list[str]) -> list[str]:
    """The words up to where the decode starts repeating itself (a run of two to
    `_REPEAT_WORDS` words said again at once): a draft with a short window and a prompt can
    loop ("Captain Frair. Captain Frair. Captain"), and three looping decodes would agree."""
    plain = [_normal(word) for word in words]
    for start in range(len(plain)):
        for length in range(2, min(_REPEAT_WORDS, (len(plain) - start) // 2) + 1):
            middle = start + length
            if plain[start:middle] == plain[middle : middle + length]:
                return words[:middle]
    return words


def _latest(text: str, characters: int) -> str:
    """The end of `text`, at most `characters` long, from a word's start (where it has
    spaces)."""
    text = text.strip()
    if len(text) <= characters:
        return text
    end = text[len(text) - characters :]
    return end.partition(" ")[2] or end


def _normal(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _same(a: str, b: str) -> bool:
    return _normal(a) == _normal(b)


def _after(sent: list[str], words: list[str]) -> list[str]:
    """The words of a decode that come after the `sent` words. A later decode may read the sent
    words differently, so the decode's prefix that stands for them is the one closest to them
    in word edits (case and punctuation aside), of equals the one as long as they are: sent
    "what you" against "what your country can do for you" stands for "what your", not for the
    whole sentence."""
    if not sent:
        return list(words)
    a, b = [_normal(w) for w in sent], [_normal(w) for w in words]
    # distance[j]: edits between the sent words so far and the decode's first j words.
    distance = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        previous, distance = distance, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            distance[j] = min(
                previous[j] + 1,  # a sent word the decode lacks
                distance[j - 1] + 1,  # a decode word the sent words lack
                previous[j - 1] + (word != b[j - 1]),
            )
    end = min(range(len(b) + 1), key=lambda j: (distance[j], abs(j - len(a)), j))
    return list(words[end:])


def _commit_empty(seconds: float) -> InvalidRequest:
    return InvalidRequest(
        "Error committing input audio buffer: buffer too small. Expected at least "
        f"{_MIN_COMMIT_SECONDS * 1000:.0f}ms of audio, but buffer only has "
        f"{seconds * 1000:.2f}ms of audio.",
        code="input_audio_buffer_commit_empty",
    )


def _ms(samples: int) -> int:
    return round(samples * 1000 / SAMPLE_RATE)


def _log(probability: float) -> float:
    return math.log(max(probability, 1e-12))
