"""faster-whisper (CTranslate2) behind the Transcriber interface."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harken.engine.batching import BatchingWhisper
from harken.engine.batching import install as install_batching
from harken.engine.runtime import prepare_ctranslate2
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
# A draft (live partial text) is encoded with this much silence after its audio instead of a
# whole 30-second window: the encoder is most of a short clip's cost (whisper-base, 2 cores: 0.54 s
# for 30 s, 0.09 s for 10 s). Measured on prefixes of 14 clips (0.6 s on, every 0.5 s, 141
# decodes, beam 5): whisper-base 0.43 s a decode against 0.86 s, the text the full window's
# (but for its last two words) in 121 of 141 (4 s of padding: 114, and Whisper looped more
# often; 12 s: 123); tiny.en 0.25 s against 0.46 s, 109 of 141.
_DRAFT_PADDING_SECONDS = 8.0
# A draft stops after this many tokens a second of its audio (plus as many): Whisper reading
# 0.6 s of a word can loop ("I'm sorry" fifty times, 200 tokens at 19 ms each).
_DRAFT_TOKENS_PER_SECOND = 10


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    prepare_ctranslate2()
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
        prepare_ctranslate2()
        from faster_whisper import WhisperModel

        self.name = name
        self.device = pick_device(device)
        self.compute_type = pick_compute_type(self.device, compute_type)
        self.beam_size = beam_size
        self.max_concurrency = max(1, max_concurrency)
        # Every worker may use every core: a lone request then runs at full speed, and under
        # load two workers sharing the cores measured no slower than splitting them.
        threads = threads_per_worker or cpu_threads or os.cpu_count() or 1
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
        self.parallel_windows = 1
        if batch_size > 1 and self.device == "cpu":
            self.batcher = install_batching(
                self._model, max_batch=batch_size, executors=self.max_concurrency
            )
            # A long recording reads this many pieces at once, their beam searches run as one
            # batch (engine/batching.py: siblings).
            self.parallel_windows = batch_size
        # Reading an unknown language costs faster-whisper a second encoder pass over the first
        # window (once to detect, once to transcribe); the encoding is reused instead.
        self._encodings = _ReuseLastEncoding(self._model.encode)
        self._model.encode = self._encodings  # type: ignore[method-assign]
        self.multilingual: bool = bool(self._model.model.is_multilingual)
        self._tokenizer = self._model.hf_tokenizer
        log.info(
            "loaded %s on %s (%s, %d threads, %d workers, batches of %d)",
            name, self.device, self.compute_type, threads, self.max_concurrency, batch_size,
        )  # fmt: skip

    def supported_languages(self) -> frozenset[str]:
        return frozenset(self._model.supported_languages)

    def warm_up(self) -> None:
        """Read a second of silence on every worker at once, so that the first request does
        not pay the runtime's first-call costs (its buffers, threads and kernels). Measured on
        a 2.4 s clip (whisper-base, 2 cores, 3 fresh processes each): the first call took
        0.71-0.84 s, every later one, and the first after this, 0.64-0.69 s. Costs about one
        30 s window per worker; the server calls it while loading, a one-off command need not."""
        silence = np.zeros(self._model.feature_extractor.sampling_rate, dtype=np.float32)
        options = TranscriptionOptions(language="en", temperature=0.0)
        failed: list[BaseException] = []

        def read() -> None:
            try:
                for _ in self.transcribe(silence, options).segments:
                    pass
            except BaseException as exc:  # re-raised on the caller's thread
                failed.append(exc)

        workers = [threading.Thread(target=read) for _ in range(self.max_concurrency)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failed:
            raise failed[0]

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcription:
        audio = as_float32(audio)
        extractor = self._model.feature_extractor
        if not options.draft or len(audio) > extractor.n_samples:
            return self._transcribe(audio, options)
        # A draft: the encoder reads the audio and a little padding, not a 30-second window
        # (the padding is what a full window would have there); decoded here, in one go, as the
        # shorter encoding lasts only while this thread reads it.
        seconds = len(audio) / extractor.sampling_rate
        frames_per_second = extractor.sampling_rate // extractor.hop_length
        frames = int(np.ceil(seconds + _DRAFT_PADDING_SECONDS)) * frames_per_second
        frames = min(frames, extractor.nb_max_frames)
        tokens = int(_DRAFT_TOKENS_PER_SECOND * (seconds + 1))
        with self._encodings.cut_to(frames):
            result = self._transcribe(audio, options, max_new_tokens=tokens)
            segments = tuple(result.segments)
        return Transcription(info=result.info, segments=iter(segments))

    def _transcribe(
        self, audio: np.ndarray, options: TranscriptionOptions, max_new_tokens: int | None = None
    ) -> Transcription:
        temperature = _TEMPERATURE_FALLBACK if options.temperature is None else options.temperature
        self._encodings.forget()
        language, probability = options.language, None
        one_window = len(audio) <= self._model.feature_extractor.n_samples  # 30 s
        if language is None and self.multilingual and one_window:
            language, probability = self._detect_language(audio)
        segments, info = self._model.transcribe(
            audio,
            language=language,
            task=options.task,
            beam_size=options.beam_size or self.beam_size,
            temperature=temperature,
            initial_prompt=options.prompt or None,
            hotwords=options.hotwords or None,
            word_timestamps=options.word_timestamps,
            vad_filter=False,
            condition_on_previous_text=True,
            max_new_tokens=max_new_tokens,
        )
        return Transcription(
            info=TranscriptionInfo(
                language=info.language,
                language_probability=float(
                    info.language_probability if probability is None else probability
                ),
                duration=float(info.duration),
            ),
            segments=_convert(segments, on_end=self._encodings.forget),
        )

    def _detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """Detect the language on exactly the window faster-whisper transcribes first.

        Left to itself, faster-whisper detects on a window that keeps the last frame of a short
        clip, which its transcription then drops, so the two encodings differ by a frame and
        neither can stand in for the other. Detecting on the transcribed window makes the
        transcription's own encoding the one reused, so the text is the raw engine's. The mel
        features are computed here and again by faster-whisper (about 25 ms for 30 s, against
        the second encoder pass of about a second that this saves).
        """
        features = self._model.feature_extractor(audio)
        frames = max(1, features.shape[-1] - 1)  # a blip of audio still gets one frame
        language, probability, _ = self._model.detect_language(features=features[:, :frames])
        return language, float(probability)


class _ReuseLastEncoding:
    """Stands in for `WhisperModel.encode`: each thread's last window and its encoding are kept,
    and the same window asked again gets the kept encoding instead of a second encoder pass.
    The encoder is deterministic, so this changes no result; `forget` drops what a thread kept
    once its transcription is over. Inside `cut_to` (a draft) windows are encoded cut short."""

    def __init__(self, encode: Callable[[np.ndarray], Any]) -> None:
        self._encode = encode
        self._local = threading.local()
        self.reused = 0

    @contextlib.contextmanager
    def cut_to(self, frames: int) -> Iterator[None]:
        """Windows this thread encodes inside the block are cut to their first `frames`."""
        self._local.frames = frames
        try:
            yield
        finally:
            self._local.frames = None

    def __call__(self, features: np.ndarray) -> Any:
        frames = getattr(self._local, "frames", None)
        if frames is not None:
            features = np.ascontiguousarray(np.asarray(features)[..., :frames])
        last = getattr(self._local, "last", None)
        if last is not None and np.array_equal(last[0], features):
            self.reused += 1
            return last[1]
        encoded = self._encode(features)
        self._local.last = (np.array(features, copy=True), encoded)
        return encoded

    def forget(self) -> None:
        self._local.last = None


def _convert(segments: Iterator, on_end: Callable[[], None]) -> Iterator[Segment]:
    try:
        yield from _segments(segments)
    finally:
        on_end()


def _segments(segments: Iterator) -> Iterator[Segment]:
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
