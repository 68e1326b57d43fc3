"""The output renderers on their own: what subtitle parsers and OpenAI clients rely on.

These feed the renderers hand-made segments to reach the edge cases (hours-long files,
overlapping or backwards timestamps, markup characters, CJK text) that a few seconds of real
speech do not; the real model's output goes through the same code in
test_audio_transcriptions.py.
"""

from __future__ import annotations

import itertools
import json
import math

import srt
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from harken.engine.types import Segment, TranscriptionInfo, Word
from harken.formats import (
    FORMATS,
    TextJoiner,
    fit_to_duration,
    render,
    render_srt,
    render_text,
    render_verbose_json,
    render_vtt,
    repair_words,
    transcript_text,
)

INFO = TranscriptionInfo(language="en", language_probability=0.99, duration=10.0)


def seg(i: int, start: float, end: float, text: str, words: tuple[Word, ...] | None = None):
    return Segment(id=i + 1, seek=0, start=start, end=end, text=text, words=words)


TWO = [seg(0, 0.0, 4.2, " Hello there."), seg(1, 4.2, 9.5, " How are you?")]


def test_text_joins_segments_like_the_streamed_deltas():
    assert render_text(TWO) == "Hello there. How are you?"
    joiner = TextJoiner()
    deltas = [joiner.add(s.text) for s in TWO]
    assert "".join(deltas) == transcript_text(TWO)
    # Chinese segments carry no leading space and are joined without one.
    zh = [seg(0, 0, 1, "今天天气很好。"), seg(1, 1, 2, "我们出去吧。")]
    assert transcript_text(zh) == "今天天气很好。我们出去吧。"
    assert transcript_text([seg(0, 0, 1, "  "), *TWO]) == "Hello there. How are you?"


def test_srt_is_numbered_from_one_with_comma_milliseconds():
    body = render_srt(TWO)
    assert body == (
        "1\n00:00:00,000 --> 00:00:04,200\nHello there.\n\n"
        "2\n00:00:04,200 --> 00:00:09,500\nHow are you?\n"
    )
    cues = list(srt.parse(body))
    assert [c.index for c in cues] == [1, 2]
    assert [c.content for c in cues] == ["Hello there.", "How are you?"]


def test_vtt_has_the_header_and_dot_milliseconds():
    body = render_vtt(TWO)
    assert body.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:04.200\nHello there.\n")
    captions = webvtt.from_string(body).captions
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.000", "00:00:04.200", "Hello there."),
        ("00:00:04.200", "00:00:09.500", "How are you?"),
    ]


def test_times_past_an_hour_and_rounding():
    long = [seg(0, 3723.4567, 3725.0004, " Late.")]
    assert "01:02:03,457 --> 01:02:05,000" in render_srt(long)
    assert "01:02:03.457 --> 01:02:05.000" in render_vtt(long)


def test_cue_text_that_would_break_the_file_is_made_safe():
    nasty = [seg(0, 0, 1, " a --> b\n\nc"), seg(1, 1, 2, " x < y & z")]
    cues = list(srt.parse(render_srt(nasty)))
    assert [c.content for c in cues] == ["a -> b c", "x < y & z"]
    vtt = render_vtt(nasty)
    assert "x &lt; y &amp; z" in vtt
    assert len(webvtt.from_string(vtt).captions) == 2


def test_empty_segments_are_skipped_and_numbering_stays_dense():
    body = render_srt([seg(0, 0, 1, " One."), seg(1, 1, 2, " "), seg(2, 2, 3, " Three.")])
    assert [c.index for c in srt.parse(body)] == [1, 2]
    assert render_srt([]) == ""
    assert render_vtt([]) == "WEBVTT\n"


def test_backwards_timestamps_are_repaired_for_players():
    broken = [seg(0, 2.0, 3.0, " B."), seg(1, 1.5, 1.0, " C.")]
    cues = list(srt.parse(render_srt(broken)))
    assert cues[1].start >= cues[0].start
    assert cues[1].end >= cues[1].start
    # verbose_json keeps each segment's own start; its end and words never come before it.
    inverted = [seg(0, 0.0, 1.0, " A."), seg(1, 2.0, 1.5, " B.", (Word(2.0, 2.0, " B.", 0.9),))]
    body = render_verbose_json(inverted, INFO, task="transcribe", words=True, usage_seconds=3)
    assert [(s["start"], s["end"]) for s in body["segments"]] == [(0.0, 1.0), (2.0, 2.0)]
    assert body["words"] == [{"word": "B.", "start": 2.0, "end": 2.0}]


def test_a_cue_that_runs_into_the_next_ends_where_it_starts():
    # Word alignment stretched a segment's last word 0.4 s past the next segment's start.
    overlapping = [seg(0, 0.0, 3.4, " One."), seg(1, 3.0, 5.0, " Two."), seg(2, 5.0, 6.0, " 3.")]
    cues = [(c.start.total_seconds(), c.end.total_seconds())
            for c in srt.parse(render_srt(overlapping))]  # fmt: skip
    assert cues == [(0.0, 3.0), (3.0, 5.0), (5.0, 6.0)]
    captions = webvtt.from_string(render_vtt(overlapping)).captions
    assert [(c.start, c.end) for c in captions] == [
        ("00:00:00.000", "00:00:03.000"),
        ("00:00:03.000", "00:00:05.000"),
        ("00:00:05.000", "00:00:06.000"),
    ]
    # verbose_json keeps the engine's own times.
    body = render_verbose_json(overlapping, INFO, task="transcribe", words=False, usage_seconds=6)
    assert body["segments"][0]["end"] == 3.4


def test_times_are_cut_at_the_end_of_the_audio():
    past = [seg(0, 0.0, 4.0, " Hi.", (Word(0.0, 4.5, " Hi.", 0.9),)), seg(1, 4.0, 7.0, " Bye.")]
    fitted = fit_to_duration(past, 5.25)
    assert [(s.start, s.end) for s in fitted] == [(0.0, 4.0), (4.0, 5.25)]
    info = TranscriptionInfo("en", 1.0, 5.25)
    body, _ = render("srt", past, info)
    assert list(srt.parse(body))[-1].end.total_seconds() == 5.25
    verbose, _ = render("verbose_json", past, info, words=True)
    assert verbose["segments"][-1]["end"] == 5.25
    assert all(w["end"] <= 4.0 for w in verbose["words"])


def test_words_are_clamped_inside_their_segment_and_monotonic():
    words = (
        Word(-0.2, 0.5, " Hello", 0.9),  # before the segment
        Word(0.4, 0.3, " there", 0.8),  # ends before it starts, overlaps the previous word
        Word(1.0, 2.7, " friend.", 0.7),  # past the segment
    )
    segments = [seg(0, 0.0, 2.5, " Hello there friend.", words), seg(1, 2.5, 4.0, " Bye.")]
    [(_, fixed), (_, none)] = repair_words(segments)
    assert none == []
    assert [w.word for w in fixed] == ["Hello", "there", "friend."]
    previous_end = 0.0
    for w in fixed:
        assert 0.0 <= w.start <= w.end <= 2.5
        assert w.start >= previous_end
        previous_end = w.end


def test_verbose_json_has_openais_fields():
    words = (Word(0.0, 0.5, " Hello", 0.9), Word(0.5, 1.2, " there.", 0.9))
    segments = [
        Segment(
            id=1, seek=0, start=0.0, end=4.2, text=" Hello there.", tokens=(50364, 2425),
            temperature=0.0, avg_logprob=-0.25, compression_ratio=1.1, no_speech_prob=0.01,
            words=words,
        ),
        seg(1, 4.2, 9.5, " How are you?"),
    ]  # fmt: skip
    body = render_verbose_json(segments, INFO, task="transcribe", words=True, usage_seconds=10)
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert body["duration"] == 10.0 and body["text"] == "Hello there. How are you?"
    assert body["usage"] == {"type": "duration", "seconds": 10}
    first = body["segments"][0]
    assert set(first) == {
        "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
        "compression_ratio", "no_speech_prob",
    }  # fmt: skip
    assert [s["id"] for s in body["segments"]] == [0, 1]
    assert first["tokens"] == [50364, 2425]
    assert body["words"] == [
        {"word": "Hello", "start": 0.0, "end": 0.5},
        {"word": "there.", "start": 0.5, "end": 1.2},
    ]
    without = render_verbose_json(segments, INFO, task="transcribe", words=False, usage_seconds=10)
    assert "words" not in without
    german = TranscriptionInfo("de", 0.9, 10.0)
    assert (
        render_verbose_json(TWO, german, task="transcribe", words=False, usage_seconds=10)[
            "language"
        ]
        == "german"
    )
    # A translation's language is that of its output, as OpenAI documents.
    assert (
        render_verbose_json(TWO, german, task="translate", words=False, usage_seconds=10)[
            "language"
        ]
        == "english"
    )


def test_verbose_json_is_strict_json_even_when_the_engine_gives_nan():
    odd = [Segment(0, 0, 0.0, 1.0, " x", avg_logprob=-math.inf, compression_ratio=math.nan)]
    body = render_verbose_json(odd, INFO, task="transcribe", words=False, usage_seconds=1)
    json.dumps(body, allow_nan=False)
    assert body["segments"][0]["avg_logprob"] is None


def test_render_gives_every_format_its_media_type():
    expected = {
        "json": "application/json",
        "verbose_json": "application/json",
        "text": "text/plain; charset=utf-8",
        "srt": "application/x-subrip; charset=utf-8",
        "vtt": "text/vtt; charset=utf-8",
    }
    for fmt in FORMATS:
        body, media_type = render(fmt, TWO, INFO)
        assert media_type == expected[fmt]
        assert isinstance(body, dict) == fmt.endswith("json")
    body, _ = render("json", TWO, TranscriptionInfo("en", 1.0, 4.01))
    assert body == {
        "text": "Hello there. How are you?",
        "usage": {"type": "duration", "seconds": 5},
    }


# Any sequence of segments, however odd its times, renders to files the parsers accept, with
# cue starts that never go backwards and texts that join to the transcript.
_texts = st.text(alphabet="abc xyz.,<>&-", min_size=0, max_size=12)
_segments = st.lists(
    st.tuples(
        st.floats(0, 20000, allow_nan=False), st.floats(0, 50, allow_nan=False), _texts
    ),
    max_size=8,
).map(
    lambda items: [seg(i, start, start + length, " " + text) for i, (start, length, text) in
                   enumerate(items)]
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(_segments)
def test_any_segments_give_parseable_monotonic_subtitles(segments):
    cues = list(srt.parse(render_srt(segments)))
    captions = webvtt.from_string(render_vtt(segments)).captions
    texts = [" ".join(s.text.split()) for s in segments if s.text.strip()]
    assert len(cues) == len(captions) == len(texts)
    assert [c.index for c in cues] == list(range(1, len(cues) + 1))
    for before, after in itertools.pairwise(cues):
        assert after.start >= before.start
        assert before.end <= after.start or before.start == after.start
    for cue in cues:
        assert cue.end >= cue.start
    assert " ".join(c.content for c in cues) == " ".join(t.replace("-->", "->") for t in texts)
