"""The engine's result and option types: the only things the rest of harken sees of a model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from harken.engine.segmentation import SegmentationOptions

Task = Literal["transcribe", "translate"]
ChineseScript = Literal["simplified", "traditional", "original"]


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    """What a request asks of the model, independent of the API dialect it came in."""

    language: str | None = None  # None: detect
    task: Task = "transcribe"
    prompt: str | None = None  # decoding context (Whisper's initial prompt)
    hotwords: str | None = None
    temperature: float | None = None  # None: the engine's fallback schedule
    word_timestamps: bool = False
    beam_size: int | None = None  # None: the model's configured default
    # How long audio is cut into pieces; None: the server's configured default.
    segmentation: SegmentationOptions | None = None
    # The script of Mandarin text: "simplified" (as MiMo answers), "traditional" or "original"
    # (as the model wrote it); None: the server's configured default.
    chinese_script: ChineseScript | None = None
    # A quick reading of at most one window, for live partial text that later readings check:
    # the model may trade a little accuracy for speed (see the backend for how).
    draft: bool = False
    # Audio well under one window read in a window cut to its length and a little padding, not
    # a whole 30 s one (about half the time for a few seconds of speech), where the language is
    # known; a reading that fails the model's checks is made again on the whole window. The text
    # may differ by a word or a comma. Longer audio: its last window, where it holds that little.
    # For the pieces of a long recording (see the backend).
    short_window: bool = False
    # Where the caller heard speech in the audio (seconds; e.g. VAD's stretches): a window whose
    # reading ends early, the model taking what follows for no speech where there is speech,
    # is read on from there rather than skipped (see the backend for when).
    speech: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TranscriptionInfo:
    language: str
    language_probability: float
    duration: float


@dataclass(slots=True)
class Transcription:
    """A started transcription: `info` is known, `segments` are produced lazily as decoded."""

    info: TranscriptionInfo
    segments: Iterator[Segment] = field(repr=False)


class Transcriber(Protocol):
    """One loaded speech-recognition model. Implementations are not assumed thread-safe for
    more concurrent calls than they declare in `max_concurrency`."""

    name: str
    multilingual: bool
    max_concurrency: int
    # Windows worth reading at once (pieces of one recording): more than one only where the
    # model batches concurrent calls.
    parallel_windows: int

    def supported_languages(self) -> frozenset[str]: ...

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcription:
        """Start transcribing 16 kHz mono float32 `audio` of at most a few minutes (long audio
        goes through `engine.longform`, which calls this piece by piece). Blocking; call off
        the event loop."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is in this model's tokenizer (for usage accounting)."""
        ...


@runtime_checkable
class LanguageDetector(Protocol):
    """A Transcriber that can tell the language of audio without transcribing it."""

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """The language of 16 kHz mono float32 `audio` (read as one window: at most 30 s
        count) and the model's probability for it."""
        ...
