"""Model-agnostic speech recognition: the Transcriber interface and its backends.

Nothing here knows about HTTP or the server's settings: the service builds engine objects from
those (`harken.service.loading`).
"""

from __future__ import annotations

from harken.engine.longform import transcribe_long
from harken.engine.segmentation import (
    SAMPLE_RATE,
    Piece,
    SegmentationOptions,
    load_speech_model,
)
from harken.engine.types import (
    Segment,
    Transcriber,
    Transcription,
    TranscriptionInfo,
    TranscriptionOptions,
    Word,
)

__all__ = [
    "SAMPLE_RATE",
    "Piece",
    "Segment",
    "SegmentationOptions",
    "Transcriber",
    "Transcription",
    "TranscriptionInfo",
    "TranscriptionOptions",
    "Word",
    "load_speech_model",
    "transcribe_long",
]
