"""Long recordings through any Transcriber: piece by piece, as one lazy stream of segments.

Each piece (see `segmentation`) is at most one model window of audio, converted to float32
only while it is transcribed, so memory does not grow with the length of the recording and the
first segments come out after the first piece rather than after the whole file. Timestamps are
mapped back through the piece's parts (a time in a part moves by that part's offset); pieces
never overlap, so no word is read twice at a join, and every stretch of speech is inside some
piece, so none is skipped.

Each piece is decoded on its own, with only the caller's prompt. Passing the previous pieces'
text as the prompt (as Whisper does between its windows) was tried and measured worse: on a
90 s reading, tiny.en then often gave one untimed segment per piece and dropped whole sentences
(WER 0.23 against 0.04 for the clips read one by one); without it nothing was lost.
"""

from __future__ import annotations

import bisect
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
    result = transcriber.transcribe(as_float32(first.samples(audio)), options)
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
        result = transcriber.transcribe(as_float32(piece.samples(audio)), options)


def _shifted(segment: Segment, piece: Piece, new_id: int) -> Segment:
    clock = _PieceClock(piece)
    pauses = _pauses(piece)

    def span(start: float, end: float, word: bool) -> tuple[float, float]:
        if word:
            start, end = clock.word(start, end)
        else:
            start, end = clock.start(start), clock.end(end)
        start, end = _out_of_pauses(start, end, pauses)
        return round(start, 3), round(end, 3)

    words = segment.words
    if words is not None:
        words = tuple(
            dataclasses.replace(w, start=start, end=end)
            for w in words
            for start, end in [span(w.start, w.end, word=True)]
        )
    start, end = span(segment.start, segment.end, word=False)
    return dataclasses.replace(
        segment,
        id=new_id,
        seek=round(clock.start(segment.seek / 100) * 100),
        start=start,
        end=end,
        words=words,
    )


class _PieceClock:
    """Maps seconds into the audio a piece read to seconds of the original recording.

    A time inside a part moves by that part's offset. Where two parts meet (most of a long
    pause was left out there) the same moment is both the first part's end and the next
    part's start, so a start maps to where speech resumes and an end to where it stopped.
    Whisper may put a time past the audio it was given: it is kept inside the piece."""

    def __init__(self, piece: Piece) -> None:
        self.parts = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in piece.read]
        self.begins: list[float] = []  # where each part begins in the piece's own audio
        read = 0.0
        for a, b in self.parts:
            self.begins.append(read)
            read += b - a

    def start(self, t: float) -> float:
        return self._map(self._part_starting(t), t)

    def end(self, t: float) -> float:
        return self._map(self._part_ending(t), t)

    def word(self, start: float, end: float) -> tuple[float, float]:
        """A word is said on one side of a cut: one that Whisper's alignment ran across a
        join is kept in the part that holds most of it."""
        first, last = self._part_starting(start), self._part_ending(end)
        if first < last:
            join = self.begins[first + 1]
            if join - start >= end - join:
                last, end = first, join
            else:
                first, start = last, self.begins[last]
        return self._map(first, start), self._map(last, end)

    def _part_starting(self, t: float) -> int:
        """The part a start at `t` falls in (at a join: the later part)."""
        return max(0, bisect.bisect_right(self.begins, t) - 1)

    def _part_ending(self, t: float) -> int:
        """The part an end at `t` falls in (at a join: the earlier part)."""
        return max(0, bisect.bisect_left(self.begins, t) - 1)

    def _map(self, index: int, t: float) -> float:
        a, b = self.parts[index]
        return min(b, a + max(0.0, t - self.begins[index]))


def _pauses(piece: Piece) -> list[tuple[float, float]]:
    """The pauses between the stretches of speech inside a piece, in seconds of the recording
    (whether read or left out)."""
    return [
        (end / SAMPLE_RATE, start / SAMPLE_RATE)
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
