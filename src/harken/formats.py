"""Output formats for a transcript: plain text, SRT, WebVTT and OpenAI's verbose JSON.

Renderers take the engine's result types only (no HTTP, no service), so the server and the CLI
produce byte-identical files from the same segments. One joining rule (`TextJoiner`) turns
segments into text everywhere: the chat endpoint's deltas, the audio API and the CLI agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

from harken.engine.types import Segment, TranscriptionInfo, Word
from harken.languages import language_name

# OpenAI's response formats: the one list the API, the client and the CLI accept.
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
FORMATS: tuple[ResponseFormat, ...] = get_args(ResponseFormat)
# What `stream=true` can carry: text events; verbose_json adds each segment's times to them.
STREAM_FORMATS: tuple[ResponseFormat, ...] = ("json", "text", "verbose_json")

MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


class TextJoiner:
    """Turns segment texts into the deltas a client receives, so that the deltas joined are
    exactly the full transcript: no leading space, one space where the model put one between
    segments (none between Chinese or Japanese segments), one space between audio parts."""

    def __init__(self) -> None:
        self.text = ""
        self._space_pending = False

    def next_part(self) -> None:
        """The following text belongs to another audio part: separate it by a space."""
        self._space_pending = True

    def add(self, segment_text: str) -> str:
        stripped = segment_text.strip()
        if not stripped:
            return ""
        needs_space = bool(self.text) and (self._space_pending or segment_text[:1].isspace())
        delta = (" " if needs_space else "") + stripped
        self._space_pending = False
        self.text += delta
        return delta


def transcript_text(segments: Iterable[Segment]) -> str:
    """The whole transcript, joined by the same rule as the streamed deltas."""
    joiner = TextJoiner()
    for segment in segments:
        joiner.add(segment.text)
    return joiner.text


def usage_seconds(duration: float) -> int:
    """Billable seconds: the duration rounded up, at least 1 for any audio (the one rule: the
    chat dialect's usage and every audio response use it)."""
    return max(1, math.ceil(duration)) if duration > 0 else 0


def fit_to_duration(segments: Iterable[Segment], duration: float) -> list[Segment]:
    """Segments with times cut at the end of the audio: Whisper's last timestamp token can
    point past it, and a cue that outlasts the file confuses players and editors."""
    fitted = []
    for segment in segments:
        if segment.end <= duration and segment.start <= duration:
            fitted.append(segment)
            continue
        words = segment.words
        if words is not None:
            words = tuple(
                dataclasses.replace(w, start=min(w.start, duration), end=min(w.end, duration))
                for w in words
            )
        fitted.append(
            dataclasses.replace(
                segment, start=min(segment.start, duration), end=min(segment.end, duration),
                words=words,
            )
        )  # fmt: skip
    return fitted


# --- subtitles
def _cues(segments: Iterable[Segment]) -> list[tuple[float, float, str]]:
    """(start, end, text) per non-empty segment, with times repaired so that they never go
    backwards and no cue ends before it starts (subtitle players reject both), and a cue that
    runs on past the next one's start ends there: players show overlapping cues stacked, the
    later line above the earlier. Whisper's word alignment can stretch a segment's last word
    a few tenths of a second past the next segment's start (long recordings and the raw
    engine alike). Cues that start together are left as they are."""
    cues: list[tuple[float, float, str]] = []
    previous_start = 0.0
    for segment in segments:
        text = " ".join(segment.text.split())  # a blank line inside a cue would end it
        if not text:
            continue
        start = max(segment.start, previous_start, 0.0)
        end = max(segment.end, start)
        if cues and cues[-1][0] < start < cues[-1][1]:
            cues[-1] = (cues[-1][0], start, cues[-1][2])
        cues.append((start, end, text))
        previous_start = start
    return cues


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render_text(segments: Iterable[Segment]) -> str:
    return transcript_text(segments)


def render_srt(segments: Iterable[Segment]) -> str:
    """SubRip: cues numbered from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each."""
    blocks = []
    for number, (start, end, text) in enumerate(_cues(segments), start=1):
        text = text.replace("-->", "->")
        blocks.append(f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: a bare `<` or `&` would start a tag or an entity.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(segments: Iterable[Segment]) -> str:
    """WebVTT: the `WEBVTT` header, then cues timed `HH:MM:SS.mmm --> HH:MM:SS.mmm`."""
    blocks = ["WEBVTT\n"]
    for start, end, text in _cues(segments):
        blocks.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{_vtt_escape(text)}\n")
    return "\n".join(blocks)


# --- verbose JSON
def _number(value: float) -> float | None:
    """JSON has no NaN or infinity; a value the engine could not compute becomes null."""
    return float(value) if math.isfinite(value) else None


def repair_words(segments: Iterable[Segment]) -> list[tuple[Segment, list[Word]]]:
    """Each segment with its words clamped inside the segment and never going backwards.

    Whisper's alignment occasionally puts a word a few ms outside its segment or before the
    previous word; clients that build captions from words assume neither happens.
    """
    repaired = []
    previous_end = 0.0
    for segment in segments:
        words = []
        last = _end(segment)
        for word in segment.words or ():
            text = word.word.strip()
            if not text:
                continue
            start = min(max(word.start, segment.start, previous_end), last)
            end = min(max(word.end, start), last)
            words.append(Word(start=start, end=end, word=text, probability=word.probability))
            previous_end = end
        repaired.append((segment, words))
    return repaired


def _end(segment: Segment) -> float:
    """Where a segment ends, never before it starts."""
    return max(segment.end, segment.start)


def _segment_body(index: int, segment: Segment) -> dict[str, Any]:
    return {
        "id": index,  # OpenAI numbers segments from 0 (faster-whisper from 1)
        "seek": segment.seek,
        "start": round(segment.start, 3),
        "end": round(_end(segment), 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": _number(segment.avg_logprob),
        "compression_ratio": _number(segment.compression_ratio),
        "no_speech_prob": _number(segment.no_speech_prob),
    }


def render_verbose_json(
    segments: Sequence[Segment],
    info: TranscriptionInfo,
    *,
    task: str,
    words: bool,
    usage_seconds: int,
) -> dict[str, Any]:
    """OpenAI's `verbose_json`: `language` is a full English name, and for a translation the
    language of the output (always english), as OpenAI documents it."""
    segments = fit_to_duration(segments, info.duration)
    body: dict[str, Any] = {
        "task": task,
        "language": "english" if task == "translate" else language_name(info.language),
        "duration": round(info.duration, 3),
        "text": transcript_text(segments),
        "segments": [_segment_body(i, s) for i, s in enumerate(segments)],
    }
    if words:
        body["words"] = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
            for _, segment_words in repair_words(segments)
            for w in segment_words
        ]
    body["usage"] = {"type": "duration", "seconds": usage_seconds}
    return body


def render(
    fmt: str,
    segments: Sequence[Segment],
    info: TranscriptionInfo,
    *,
    task: str = "transcribe",
    words: bool = False,
) -> tuple[str | dict[str, Any], str]:
    """The body for response format `fmt` (one of FORMATS) and its media type."""
    segments = fit_to_duration(segments, info.duration)
    if fmt == "json":
        body: str | dict[str, Any] = {
            "text": transcript_text(segments),
            "usage": {"type": "duration", "seconds": usage_seconds(info.duration)},
        }
    elif fmt == "verbose_json":
        body = render_verbose_json(
            segments, info, task=task, words=words, usage_seconds=usage_seconds(info.duration)
        )
    elif fmt == "text":
        body = render_text(segments)
    elif fmt == "srt":
        body = render_srt(segments)
    elif fmt == "vtt":
        body = render_vtt(segments)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return body, MEDIA_TYPES[fmt]
