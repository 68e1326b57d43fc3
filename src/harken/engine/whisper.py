"""faster-whisper (CTranslate2) behind the Transcriber interface."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from harken.engine.batching import BatchingWhisper
from harken.engine.batching import install as install_batching
from harken.engine.segmentation import as_float32
from harken.engine.types import (
    Segment,
    Transcription,
    TranscriptionInfo,
    TranscriptionOptions,
    Word,
)

log = logging.getLogger(__name__)

# Whisper's own fallback: retry a window at higher temperature when decoding degenerates.
_TEMPERATURE_FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def pick_compute_type(device: str, compute_type: str) -> str:
    """float32 on CPU: measured faster than int8 on AVX2 CPUs without VNNI (README, Defaults)."""
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "float32"


class FasterWhisperTranscriber:
    def __init__(
        self,
        name: str,
        weights: Path | str,
        *,
        device: str = "auto",
        compute_type: str = "default",
        cpu_threads: int = 0,
        beam_size: int = 5,
        max_concurrency: int = 1,
        threads_per_worker: int = 0,
        batch_size: int = 1,
        download_root: Path | None = None,
    ) -> None:
        from faster_whisper import WhisperModel

        self.name = name
        self.device = pick_device(device)
        self.compute_type = pick_compute_type(self.device, compute_type)
        self.beam_size = beam_size
        self.max_concurrency = max(1, max_concurrency)
        threads = cpu_threads or os.cpu_count() or 1
        if self.device == "cpu" and self.max_concurrency > 1:
            threads = max(1, threads // self.max_concurrency)
        threads = threads_per_worker or threads
        self._model = WhisperModel(
            str(weights),
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=threads,
            num_workers=self.max_concurrency,
            download_root=str(download_root) if download_root else None,
            local_files_only=isinstance(weights, Path),
        )
        # Windows of concurrent requests share model calls (engine/batching.py). CPU only:
        # the batcher moves encoder outputs through host memory.
        self.batcher: BatchingWhisper | None = None
        if batch_size > 1 and self.device == "cpu":
            self.batcher = install_batching(
                self._model, max_batch=batch_size, executors=self.max_concurrency
            )
        self.multilingual: bool = bool(self._model.model.is_multilingual)
        self._tokenizer = self._model.hf_tokenizer
        log.info(
            "loaded %s on %s (%s, %d threads, %d workers, batches of %d)",
            name, self.device, self.compute_type, threads, self.max_concurrency, batch_size,
        )  # fmt: skip

    def supported_languages(self) -> frozenset[str]:
        return frozenset(self._model.supported_languages)

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcription:
        temperature = _TEMPERATURE_FALLBACK if options.temperature is None else options.temperature
        segments, info = self._model.transcribe(
            as_float32(audio),
            language=options.language,
            task=options.task,
            beam_size=options.beam_size or self.beam_size,
            temperature=temperature,
            initial_prompt=options.prompt or None,
            hotwords=options.hotwords or None,
            word_timestamps=options.word_timestamps,
            vad_filter=False,
            condition_on_previous_text=True,
        )
        return Transcription(
            info=TranscriptionInfo(
                language=info.language,
                language_probability=float(info.language_probability),
                duration=float(info.duration),
            ),
            segments=_convert(segments),
        )


def _convert(segments: Iterator) -> Iterator[Segment]:
    for s in segments:
        words = None
        if s.words is not None:
            words = tuple(
                Word(start=float(w.start), end=float(w.end), word=w.word,
                     probability=float(w.probability))
                for w in s.words
            )  # fmt: skip
        yield Segment(
            id=int(s.id),
            seek=int(s.seek),
            start=float(s.start),
            end=float(s.end),
            text=s.text,
            tokens=tuple(s.tokens),
            temperature=float(s.temperature or 0.0),
            avg_logprob=float(s.avg_logprob),
            compression_ratio=float(s.compression_ratio),
            no_speech_prob=float(s.no_speech_prob),
            words=words,
        )
