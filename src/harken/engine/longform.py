"""Long recordings through any Transcriber: piece by piece, as one lazy stream of segments.

Each piece (see `segmentation`) is at most one model window of audio, converted to float32
only while it is transcribed, so memory does not grow with the length of the recording and the
first segments come out after the first piece rather than after the whole file. Timestamps are
shifted by the piece's offset; pieces never overlap, so no word is read twice at a join, and
every stretch of speech is inside some piece, so none is skipped. The text recognised so far is
the next piece's prompt (as Whisper conditions each window on the previous one), which keeps
spelling and punctuation consistent across the joins.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator

import numpy as np

from harken.engine.segmentation import (
    SAMPLE_RATE,
    Piece,
    SegmentationOptions,
    as_float32,
    plan_pieces,
)
from harken.engine.types import (
    Segment,
    Transcriber,
    Transcription,
    TranscriptionInfo,
    TranscriptionOptions,
    Word,
)

log = logging.getLogger(__name__)

# How much earlier text is carried into the next piece's prompt (Whisper keeps ~220 tokens).
_PROMPT_CHARS = 600
# A piece decoded only at a high fallback temperature is likely garbage: don't pass it on
# (Whisper's own rule for resetting its prompt).
_PROMPT_RESET_TEMPERATURE = 0.5


def transcribe_long(
    transcriber: Transcriber,
    audio: np.ndarray,
    options: TranscriptionOptions,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_piece: Callable[[Piece], None] | None = None,
) -> Transcription:
    """Start transcribing 16 kHz mono `audio` (int16 PCM or float32) of any length.

    Returns once the language is known (from the first piece of speech); the segments are
    produced as the pieces are decoded. `should_stop` is asked between pieces, so a job whose
    client went away stops even while pieces give no text; `on_piece` hears of each piece
    before it is decoded (progress, metrics, tests).
    """
    segmentation = options.segmentation or SegmentationOptions()
    duration = audio.shape[0] / SAMPLE_RATE
    if segmentation.enabled and duration <= segmentation.min_audio_seconds:
        whole = Piece(0, int(audio.shape[0]))
        if on_piece is not None:
            on_piece(whole)
        return transcriber.transcribe(as_float32(audio), options)

    pieces = plan_pieces(audio, segmentation)
    first = next(pieces, None)
    if first is None:
        # No speech anywhere: still report a language (detected on the opening window,
        # whose segments are never decoded).
        opening = audio[: int(segmentation.max_piece_seconds * SAMPLE_RATE)]
        probe = transcriber.transcribe(as_float32(opening), options)
        info = dataclasses.replace(probe.info, duration=duration)
        return Transcription(info=info, segments=iter(()))

    if on_piece is not None:
        on_piece(first)
    result = transcriber.transcribe(as_float32(audio[first.start : first.end]), options)
    info = TranscriptionInfo(
        language=result.info.language,
        language_probability=result.info.language_probability,
        duration=duration,
    )
    piece_options = dataclasses.replace(options, language=options.language or info.language)
    return Transcription(
        info=info,
        segments=_segments(
            transcriber, audio, piece_options, first, result, pieces, should_stop, on_piece
        ),
    )


def _segments(
    transcriber: Transcriber,
    audio: np.ndarray,
    options: TranscriptionOptions,
    piece: Piece,
    result: Transcription,
    pieces: Iterator[Piece],
    should_stop: Callable[[], bool],
    on_piece: Callable[[Piece], None] | None,
) -> Iterator[Segment]:
    next_id = 0
    history = ""
    while True:
        piece_text: list[str] = []
        hot = False
        for segment in result.segments:
            yield _shifted(segment, piece, next_id)
            next_id += 1
            piece_text.append(segment.text)
            hot |= segment.temperature > _PROMPT_RESET_TEMPERATURE
        history = "" if hot else _recent(history + "".join(piece_text))
        if should_stop():
            log.info("transcription stopped after the piece ending at %.1f s", piece.end / 16e3)
            return
        following = next(pieces, None)
        if following is None:
            return
        piece = following
        if on_piece is not None:
            on_piece(piece)
        result = transcriber.transcribe(
            as_float32(audio[piece.start : piece.end]),
            dataclasses.replace(options, prompt=_prompt(options.prompt, history)),
        )


def _prompt(user_prompt: str | None, history: str) -> str | None:
    """The caller's own prompt first (it is the vocabulary they asked for), then recent text."""
    parts = [p.strip() for p in (user_prompt, history) if p and p.strip()]
    return " ".join(parts) or None


def _recent(text: str) -> str:
    """The end of `text`, at most `_PROMPT_CHARS` long, starting at a word."""
    if len(text) <= _PROMPT_CHARS:
        return text
    text = text[-_PROMPT_CHARS:]
    if text[0].isspace():
        return text
    _, space, rest = text.partition(" ")
    return " " + rest if space else text


def _shifted(segment: Segment, piece: Piece, new_id: int) -> Segment:
    offset = piece.offset
    words = segment.words
    if words is not None:
        words = tuple(
            Word(start=round(w.start + offset, 3), end=round(w.end + offset, 3), word=w.word,
                 probability=w.probability)
            for w in words
        )  # fmt: skip
    return dataclasses.replace(
        segment,
        id=new_id,
        seek=segment.seek + piece.start * 100 // SAMPLE_RATE,
        start=round(segment.start + offset, 3),
        end=round(segment.end + offset, 3),
        words=words,
    )
