"""The service between the HTTP dialects and the engine.

It owns the loaded models, decoding and its limits, option checks that depend on the model,
the scheduler, and usage accounting. Both API dialects (and anything else that wants a
transcript) call it with dialect-free values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from harken.audio import SAMPLE_RATE, decode_pcm16
from harken.catalog import Catalog, ModelEntry, WeightsUnavailable
from harken.config import Settings
from harken.engine import (
    Piece,
    Segment,
    SegmentationOptions,
    Transcriber,
    TranscriptionInfo,
    TranscriptionOptions,
    load_transcriber,
    segmentation_from_settings,
    transcribe_long,
)
from harken.errors import InvalidRequest, Overloaded, ShuttingDown, UnsupportedLanguage
from harken.formats import TextJoiner  # noqa: F401 (the one joining rule, re-exported)
from harken.languages import normalize_language
from harken.service.memory import release_free_memory
from harken.service.scheduler import JobStream, Scheduler

log = logging.getLogger(__name__)

# MiMo's published example: 4 s of audio → 25 audio tokens.
AUDIO_TOKENS_PER_SECOND = 6.25


@dataclass(frozen=True)
class AudioUsage:
    duration: float

    @property
    def seconds(self) -> int:
        return max(1, math.ceil(self.duration)) if self.duration > 0 else 0

    @property
    def audio_tokens(self) -> int:
        return math.ceil(round(self.duration * AUDIO_TOKENS_PER_SECOND, 6))


@dataclass
class LoadedModel:
    entry: ModelEntry
    transcriber: Transcriber


class TranscriptionService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings)
        self.scheduler = Scheduler.from_settings(settings)
        self.scheduler.metrics.watch_engines(self.transcribers)
        if settings.reuse_memory:
            self.scheduler.when_idle = release_free_memory
        self._keys = [k.encode() for k in settings.all_api_keys()]
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.ready = asyncio.Event()
        self.load_error: str | None = None
        self.shutting_down = False
        self._drain_deadline: float | None = None
        self.started_at = int(time.time())
        self.segmentation = segmentation_from_settings(settings)
        # Pieces of audio handed to a model so far (progress; tests see work stop with it).
        self.pieces_started = 0

    # --- lifecycle
    async def preload(self) -> None:
        """Load the configured models; `ready` is set once the default one is loaded."""
        names = [self.settings.default_model, *self.settings.preload]
        for name in dict.fromkeys(names):
            try:
                await self.model(name)
            except Exception as exc:
                log.exception("could not load model %s", name)
                if name == self.settings.default_model:
                    self.load_error = f"the default model {name!r} failed to load: {exc}"
                    return
        self.ready.set()

    async def drain(self, grace: float = 30.0) -> bool:
        """Take no new work; wait for admitted work, up to `grace` s from the first call."""
        if self._drain_deadline is None:
            self.shutting_down = True
            self._drain_deadline = time.monotonic() + grace
        finished = await self.scheduler.drain(max(0.0, self._drain_deadline - time.monotonic()))
        if not finished:
            log.warning("shutdown grace period over with work still running")
        return finished

    async def shutdown(self, grace: float = 30.0) -> None:
        await self.drain(grace)
        self.scheduler.shutdown()

    # --- auth
    @property
    def auth_required(self) -> bool:
        return bool(self._keys)

    def key_is_valid(self, supplied: str) -> bool:
        """Constant-time comparison against every configured key."""
        candidate = supplied.encode()
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(key, candidate)
        return valid

    # --- models
    async def model(self, name: str | None) -> LoadedModel:
        entry = self.catalog.resolve(name)
        loaded = self._models.get(entry.name)
        if loaded is not None:
            return loaded
        lock = self._locks.setdefault(entry.name, asyncio.Lock())
        async with lock:
            loaded = self._models.get(entry.name)
            if loaded is None:
                try:
                    transcriber = await asyncio.to_thread(load_transcriber, entry, self.settings)
                except WeightsUnavailable as exc:
                    log.error("model %s unavailable: %s", entry.name, exc)
                    raise Overloaded(
                        f"The model {name!r} is configured but its weights can't be loaded; "
                        "ask the operator to check the server log.",
                        param="model",
                    ) from exc
                loaded = LoadedModel(entry, transcriber)
                self._models[entry.name] = loaded
        return loaded

    def loaded_models(self) -> list[str]:
        return list(self._models)

    def transcribers(self) -> dict[str, Transcriber]:
        """The loaded models by name (the metrics read their batchers)."""
        return {name: loaded.transcriber for name, loaded in self._models.items()}

    # --- audio
    async def decode(self, data: bytes) -> np.ndarray:
        """Decode off the event loop, capped at the configured duration, into int16 samples
        (half the memory of float32; models get float32 a window at a time)."""
        return await asyncio.to_thread(
            decode_pcm16, data, max_seconds=self.settings.max_audio_seconds
        )

    def chunking(self, value: Any) -> SegmentationOptions:
        """The segmentation a request asks for with OpenAI's `chunking_strategy`.

        Absent: the server's configured default (long audio is always cut at pauses unless
        the operator turned VAD off). "auto": VAD with the server's settings.
        {"type": "server_vad", "threshold", "prefix_padding_ms", "silence_duration_ms"}: VAD
        with those (the padding kept around speech, and the pause that ends speech).
        A JSON string of either form is accepted too, as multipart forms carry it so.
        """
        return parse_chunking_strategy(value, self.segmentation)

    # --- options
    def resolve_language(self, model: LoadedModel, value: str | None, param: str) -> str | None:
        """The language code to force, or None to detect. Never silently falls back."""
        try:
            code = normalize_language(value)
        except KeyError:
            raise UnsupportedLanguage(
                f"Unknown language {value!r}: use an ISO 639-1 code such as 'en', 'zh' or 'de', "
                "or 'auto' to detect it.",
                param=param,
            ) from None
        transcriber = model.transcriber
        if code is not None and code not in transcriber.supported_languages():
            raise UnsupportedLanguage(
                f"The model {model.entry.name!r} does not recognise language {code!r}"
                + ("; it is English-only." if not transcriber.multilingual else "."),
                param=param,
            )
        return code

    def check_task(self, model: LoadedModel, options: TranscriptionOptions) -> None:
        if options.task == "translate" and not model.transcriber.multilingual:
            raise InvalidRequest(
                f"The model {model.entry.name!r} is English-only and cannot translate; "
                "use a multilingual model such as 'whisper-base'.",
                param="model",
            )

    # --- work
    async def transcribe(
        self, model: LoadedModel, audio: np.ndarray, options: TranscriptionOptions
    ) -> JobStream[TranscriptionInfo, Segment]:
        """Start a transcription; its info is known on return, segments arrive as decoded."""
        self.check_task(model, options)
        if self.shutting_down:
            raise ShuttingDown()

        if options.segmentation is None:
            options = dataclasses.replace(options, segmentation=self.segmentation)
        if options.chinese_script is None:
            options = dataclasses.replace(options, chinese_script=self.settings.chinese_script)
        # The job is only known once it has started; until then nobody can have left.
        jobs: list[JobStream[TranscriptionInfo, Segment]] = []

        def should_stop() -> bool:
            return bool(jobs) and jobs[0].cancelled

        def on_piece(piece: Piece) -> None:
            self.pieces_started += 1

        def start() -> tuple[TranscriptionInfo, Iterator[Segment]]:
            result = transcribe_long(
                model.transcriber, audio, options, should_stop=should_stop, on_piece=on_piece
            )
            return result.info, result.segments

        job = await self.scheduler.stream(start)
        jobs.append(job)
        return job

    def count_tokens(self, model: LoadedModel, text: str) -> int:
        return model.transcriber.count_tokens(text)


def duration_of(audio: np.ndarray) -> float:
    return audio.shape[0] / SAMPLE_RATE


_SERVER_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}


def parse_chunking_strategy(value: Any, default: SegmentationOptions) -> SegmentationOptions:
    """OpenAI's `chunking_strategy` (None, "auto", a server_vad object, or either as JSON
    text; the openai SDK sends the object as form fields `chunking_strategy[type]` etc., which
    the route gathers into a dict of strings) as segmentation options; 400 naming the field
    for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return dataclasses.replace(default, enabled=True)
        try:
            value = json.loads(text)
        except ValueError:
            raise _bad_chunking() from None
        if value == "auto":
            return dataclasses.replace(default, enabled=True)
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        raise _bad_chunking()
    unknown = set(value) - _SERVER_VAD_KEYS
    if unknown:
        raise _bad_chunking(f"unknown key {sorted(unknown)[0]!r}")
    changes: dict[str, Any] = {"enabled": True}
    threshold = _number(value.get("threshold"))
    if threshold is not None:
        if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
            raise _bad_chunking("threshold must be a number from 0 to 1")
        changes["threshold"] = float(threshold)
    for key, field in (
        ("prefix_padding_ms", "speech_pad_ms"),
        ("silence_duration_ms", "min_silence_ms"),
    ):
        amount = _number(value.get(key))
        if amount is not None:
            if not _is_number(amount) or not 0 <= amount <= 10_000:
                raise _bad_chunking(f"{key} must be a number of milliseconds from 0 to 10000")
            changes[field] = int(amount)
    return dataclasses.replace(default, **changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> Any:
    """Form fields arrive as text ("0.5"): read them as numbers; anything else is left as is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _bad_chunking(detail: str | None = None) -> InvalidRequest:
    return InvalidRequest(
        'chunking_strategy must be "auto" or {"type": "server_vad", "threshold": 0.5, '
        '"prefix_padding_ms": 300, "silence_duration_ms": 500}'
        + (f": {detail}." if detail else "."),
        param="chunking_strategy",
    )
