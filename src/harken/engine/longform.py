"""Long recordings through any Transcriber: piece by piece, as one lazy stream of segments.

Each piece (see `segmentation`) is at most one model window of audio, converted to float32
only while it is transcribed, so memory does not grow with the length of the recording and the
first segments come out after the first piece rather than after the whole file. Timestamps are
shifted by the piece's offset; pieces never overlap, so no word is read twice at a join, and
every stretch of speech is inside some piece, so none is skipped.

Each piece is decoded on its own, with only the caller's prompt. Passing the previous pieces'
text as the prompt (as Whisper does between its windows) was tried and measured worse: on a
90 s reading, tiny.en then often gave one untimed segment per piece and dropped whole sentences
(WER 0.23 against 0.04 for the clips read one by one); without it nothing was lost.
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
)

log = logging.getLogger(__name__)


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
    while True:
        for segment in result.segments:
            yield _shifted(segment, piece, next_id)
            next_id += 1
        if should_stop():
            log.info("transcription stopped after the piece ending at %.1f s", piece.end / 16e3)
            return
        following = next(pieces, None)
        if following is None:
            return
        piece = following
        if on_piece is not None:
            on_piece(piece)
        result = transcriber.transcribe(as_float32(audio[piece.start : piece.end]), options)


def _shifted(segment: Segment, piece: Piece, new_id: int) -> Segment:
    offset = piece.offset
    # Whisper may put a segment's end past the audio it was given: keep it inside the piece.
    limit = (piece.end - piece.start) / SAMPLE_RATE
    gaps = _pauses(piece)
    words = segment.words
    if words is not None:
        words = tuple(
            dataclasses.replace(w, start=round(s + offset, 3), end=round(e + offset, 3))
            for w in words
            for s, e in [_out_of_pauses(min(w.start, limit), min(w.end, limit), gaps)]
        )
    start, end = _out_of_pauses(min(segment.start, limit), min(segment.end, limit), gaps)
    return dataclasses.replace(
        segment,
        id=new_id,
        seek=segment.seek + piece.start * 100 // SAMPLE_RATE,
        start=round(start + offset, 3),
        end=round(end + offset, 3),
        words=words,
    )


def _pauses(piece: Piece) -> list[tuple[float, float]]:
    """The pauses between the stretches of speech inside a piece, in seconds from its start."""
    return [
        ((end - piece.start) / SAMPLE_RATE, (start - piece.start) / SAMPLE_RATE)
        for (_, end), (start, _) in zip(piece.speech, piece.speech[1:], strict=False)
    ]


def _out_of_pauses(
    start: float, end: float, pauses: list[tuple[float, float]]
) -> tuple[float, float]:
    """Whisper's word alignment sometimes stretches a word across a pause inside the piece
    (`5,` from 545.7 s to 549.2 s over 2.7 s of silence). VAD heard no speech there: a start in
    a pause moves to where speech resumes, an end in a pause back to where it stopped."""
    for pause_start, pause_end in pauses:
        if pause_start <= start < pause_end < end:
            start = pause_end
        if start < pause_start < end <= pause_end:
            end = pause_start
    return start, end
