"""The front door to transcription: both HTTP dialects, the CLI and `harken eval` reach the
engine through `TranscriptionService`, with dialect-free values.

It owns the loaded models, decoding and its limits, the checks of options against a model, the
scheduler, and usage accounting. It speaks no dialect and no HTTP: request models in `api/`
turn a request into `TranscriptionOptions`, and the API layer adds statuses and headers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harken.audio import decode_pcm16
from harken.catalog import Catalog, ModelEntry, WeightsUnavailable
from harken.config import Settings
from harken.engine import (
    SAMPLE_RATE,
    Piece,
    Segment,
    Transcriber,
    TranscriptionInfo,
    TranscriptionOptions,
    load_speech_model,
    transcribe_long,
)
from harken.errors import InvalidRequest, Overloaded, ShuttingDown, UnsupportedLanguage
from harken.formats import usage_seconds
from harken.service.loading import load_transcriber, segmentation_from_settings
from harken.service.memory import release_free_memory
from harken.service.scheduler import JobStream, Scheduler
from harken.service.upstream import upstream_errors, with_upstream_errors

log = logging.getLogger(__name__)

# MiMo's published example: 4 s of audio → 25 audio tokens.
AUDIO_TOKENS_PER_SECOND = 6.25


@dataclass(frozen=True)
class AudioUsage:
    duration: float

    @property
    def seconds(self) -> int:
        return usage_seconds(self.duration)

    @property
    def audio_tokens(self) -> int:
        return math.ceil(round(self.duration * AUDIO_TOKENS_PER_SECOND, 6))


@dataclass
class LoadedModel:
    entry: ModelEntry
    transcriber: Transcriber

    def knows(self, language: str) -> bool:
        return language in self.transcriber.supported_languages()


class TranscriptionService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings)
        self.scheduler = Scheduler.from_settings(settings)
        self.scheduler.metrics.watch_engines(self.transcribers)
        if settings.reuse_memory:
            self.scheduler.when_idle = release_free_memory
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
        """Load the configured models (and the VAD of long recordings and live sessions) and
        warm them up, so that the first request is as fast as the next; `ready` is set once
        all are, and never if the default model fails."""
        await asyncio.to_thread(load_speech_model)
        names = [self.settings.default_model, *self.settings.preload]
        for name in dict.fromkeys(names):
            try:
                loaded = await self.model(name)
                warm_up = getattr(loaded.transcriber, "warm_up", None)  # a hosted one has none
                if warm_up is not None:
                    started = time.monotonic()
                    await asyncio.to_thread(warm_up)
                    log.info("warmed up %s in %.2f s", name, time.monotonic() - started)
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
        for loaded in self._models.values():
            close = getattr(loaded.transcriber, "close", None)  # an upstream's connections
            if close is not None:
                await asyncio.to_thread(close)

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

    # --- options
    def check(
        self, model: LoadedModel, options: TranscriptionOptions, *, language_param: str = "language"
    ) -> None:
        """Refuse options the model can't honour (before any audio is decoded): a language it
        does not know, a translation by an English-only model."""
        transcriber = model.transcriber
        if options.language is not None and not model.knows(options.language):
            raise UnsupportedLanguage(
                f"The model {model.entry.name!r} does not recognise language "
                f"{options.language!r}"
                + ("; it is English-only." if not transcriber.multilingual else "."),
                param=language_param,
            )
        if options.task == "translate" and not transcriber.multilingual:
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
        self.check(model, options)
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
            # A model that cuts long audio its own way (an upstream, for its limits) does so.
            read_long = getattr(model.transcriber, "transcribe_long", None)
            if read_long is None:
                result = transcribe_long(
                    model.transcriber, audio, options, should_stop=should_stop, on_piece=on_piece
                )
                return result.info, result.segments
            with upstream_errors():
                result = read_long(audio, options, should_stop=should_stop, on_piece=on_piece)
            return result.info, with_upstream_errors(result.segments)

        job = await self.scheduler.stream(start)
        jobs.append(job)
        return job

    def count_tokens(self, model: LoadedModel, text: str) -> int:
        return model.transcriber.count_tokens(text)


def duration_of(audio: np.ndarray) -> float:
    return audio.shape[0] / SAMPLE_RATE
