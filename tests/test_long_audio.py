"""Long recordings: cut at pauses, joined without lost or doubled words, streamed as recognised,
stopped when the client leaves.

The long recording is made here, in a temporary folder, from the speech set: the English clips
(all but the 159 s sonnet reading, which the streaming test reads, and the telephone-band clip)
joined with pauses of 1 to 44 seconds into more than ten minutes, so that where each clip sits in
the file (and what it says) is known.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from harken.api.chunking import parse_chunking_strategy
from harken.audio import SAMPLE_RATE, decode_audio, decode_pcm16
from harken.engine import SegmentationOptions, TranscriptionOptions, batching, transcribe_long
from harken.engine.longform import _shifted, _split_at_cuts, parallel_pieces
from harken.engine.segmentation import Piece, SpeechDetector, SpeechProbabilities, plan_pieces
from harken.engine.types import Segment, Word
from harken.errors import InvalidRequest
from harken.service import transcription
from tests.conftest import Clip, normalize_text

MODEL = "whisper-tiny.en"  # English long-form speed; base is for the benchmark
GAPS = (1.0, 8.0, 0.6, 18.0, 2.5, 12.0, 1.5, 25.0, 5.0, 15.0)  # seconds of pause, in turn
MIN_SECONDS = 600.0


@dataclass(frozen=True)
class Placed:
    clip: Clip
    start: float
    end: float


@dataclass(frozen=True)
class Recording:
    path: Path
    samples: np.ndarray  # int16, as the server keeps them
    placed: tuple[Placed, ...]

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / SAMPLE_RATE


def join_clips(
    clips: list[Clip], gaps: tuple[float, ...], min_seconds: float = 0.0
) -> tuple[np.ndarray, list[Placed]]:
    """The clips one after another with pauses between them (faint noise, as in a room), the
    pauses stretched if need be so that the whole lasts `min_seconds`."""
    rng = np.random.default_rng(4)
    parts: list[np.ndarray] = []
    placed = []
    position = 0

    def pause(seconds: float) -> None:
        nonlocal position
        count = int(seconds * SAMPLE_RATE)
        parts.append(rng.normal(0.0, 0.002, count).astype(np.float32))
        position += count

    decoded = [decode_audio(clip.bytes()) for clip in clips]
    speech = sum(len(samples) for samples in decoded) / SAMPLE_RATE
    pauses = sum(gaps[i % len(gaps)] for i in range(len(clips)))
    stretch = max(1.0, (min_seconds - speech - 1.0) / pauses + 0.01)
    pause(1.0)
    for index, (clip, samples) in enumerate(zip(clips, decoded, strict=True)):
        placed.append(Placed(clip, position / SAMPLE_RATE, (position + len(samples)) / SAMPLE_RATE))
        parts.append(samples)
        position += len(samples)
        pause(gaps[index % len(gaps)] * stretch)
    joined = np.concatenate(parts)
    return np.rint(np.clip(joined, -1, 1) * 32767).astype(np.int16), placed


def write_flac(path: Path, samples: np.ndarray) -> None:
    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


@pytest.fixture(scope="module")
def english(speech: dict[str, Clip]) -> list[Clip]:
    left_out = {"librivox_shakespeare_sonnets_1-3", "ls_1272-128104-0004_8k"}
    return [clip for clip in speech.values() if clip.language == "en" and clip.id not in left_out]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, english: list[Clip]) -> Recording:
    samples, placed = join_clips(english, GAPS, MIN_SECONDS + 5)
    path = tmp_path_factory.mktemp("long") / "joined.flac"
    write_flac(path, samples)
    assert samples.shape[0] / SAMPLE_RATE > MIN_SECONDS
    return Recording(path, decode_pcm16(path.read_bytes()), tuple(placed))


@pytest.fixture(scope="module")
def one_by_one(server: Any, english: list[Clip]) -> dict[str, str]:
    """Each clip alone through the raw engine, as Whisper reads it without any cutting."""
    model = server.service._models[MODEL].transcriber
    whole = TranscriptionOptions(language="en", segmentation=SegmentationOptions(enabled=False))
    texts = {}
    for clip in english:
        result = model.transcribe(decode_pcm16(clip.bytes()), whole)
        texts[clip.id] = "".join(segment.text for segment in result.segments)
    return texts


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word errors over all clips together, divided by all their words."""
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


# --- where the cuts fall
def test_pieces_are_cut_in_pauses_and_cover_all_speech(recording: Recording):
    options = SegmentationOptions()
    pieces = list(plan_pieces(recording.samples, options))
    assert len(pieces) > 2
    # The first text comes after one stretch of speech, no longer than one window.
    assert len(pieces[0].speech) == 1 and pieces[0].seconds <= 30.0
    for before, after in itertools.pairwise(pieces):
        assert before.end <= after.start  # no audio is read twice
    covered = np.zeros(recording.samples.shape[0], dtype=bool)
    for piece in pieces:
        assert 0 < piece.seconds <= options.max_piece_seconds
        assert all(end - start <= 30 * SAMPLE_RATE for start, end in piece.speech)
        assert piece.read[0][0] == piece.start and piece.read[-1][1] == piece.end
        for (_, end), (start, _) in itertools.pairwise(piece.read):
            assert end + SAMPLE_RATE < start  # only pauses over 3 s are cut (to 2 s)
        for start, end in piece.read:
            covered[start:end] = True
        assert len(piece.samples(recording.samples)) == round(piece.seconds * SAMPLE_RATE)
    for placed in recording.placed:
        span = covered[int(placed.start * SAMPLE_RATE) : int(placed.end * SAMPLE_RATE)]
        # Only a clip's own leading/trailing silence may be left out.
        assert span.mean() > 0.8, (placed.clip.id, span.mean())
    # The long pauses are skipped: the model reads far less than the whole file, and the
    # pieces are filled with speech rather than ended at the first long pause.
    read = sum(piece.seconds for piece in pieces)
    assert read < 0.8 * recording.duration, read
    assert read / len(pieces) > 20.0, [piece.seconds for piece in pieces]


def test_speech_probabilities_do_not_depend_on_where_blocks_end(recording: Recording):
    """The VAD reads a file in blocks (a short first one, for an early first piece) and a live
    stream in whatever the client sends: the state carried across makes the cut invisible."""
    samples = recording.samples[: 75 * SAMPLE_RATE]
    blocks = np.concatenate(list(SpeechDetector().probabilities(samples)))
    stream = SpeechProbabilities()
    sizes = itertools.cycle((1000, 16_000, 333, 48_000))
    fed, begin = [], 0
    while begin < samples.shape[0]:
        size = next(sizes)
        fed.append(stream.feed(samples[begin : begin + size]))
        begin += size
    fed.append(stream.flush())
    odd = np.concatenate(fed)
    assert blocks.shape == odd.shape == (-(-samples.shape[0] // SpeechProbabilities.WINDOW),)
    np.testing.assert_allclose(blocks, odd, atol=1e-4)
    assert 0.2 < (blocks > 0.5).mean() < 0.95  # speech and pauses both there


def test_times_map_back_through_the_parts_a_piece_read():
    """A piece that read 1–3 s and 10–12 s of a recording (the pause between left out)."""
    piece = Piece(16_000, 192_000, ((16_000, 48_000), (160_000, 192_000)),
                  ((16_000, 48_000), (160_000, 192_000)))  # fmt: skip
    words = (Word(0.5, 1.0, " one", 0.9), Word(1.6, 2.0, " two", 0.9),
             Word(2.0, 2.6, " three", 0.9), Word(2.7, 3.2, " four", 0.9),
             Word(3.5, 4.5, " five", 0.9))  # fmt: skip
    segment = Segment(id=0, seek=0, start=0.5, end=4.5, text=" one two three four five",
                      tokens=(), temperature=0.0, avg_logprob=-0.1, compression_ratio=1.0,
                      no_speech_prob=0.0, words=words)  # fmt: skip
    shifted = _shifted(segment, piece, new_id=7)
    assert (shifted.id, shifted.seek, shifted.start, shifted.end) == (7, 100, 1.5, 12.0)
    assert [(w.start, w.end) for w in shifted.words] == [
        (1.5, 2.0),
        (2.6, 3.0),  # in the first part
        (10.0, 10.6),  # starts where the second part begins, not at the first one's end
        (10.7, 11.2),
        (11.5, 12.0),  # past the audio read: kept inside the piece
    ]
    # A word whose alignment ran across the join stays on the side holding most of it.
    across = dataclasses.replace(segment, words=(Word(1.7, 2.2, " six", 0.9),
                                                 Word(1.9, 2.5, " seven", 0.9)))  # fmt: skip
    assert [(w.start, w.end) for w in _shifted(across, piece, 0).words] == [
        (2.7, 3.0), (10.0, 10.5)]  # fmt: skip


def test_a_segment_that_runs_across_a_left_out_pause_is_split_there():
    """A piece that read 1–3 s and 10–12 s of a recording; Whisper wrote one segment over both
    parts (times here are the recording's), its tokens a start timestamp, the text's, an end
    timestamp."""
    piece = Piece(16_000, 192_000, ((16_000, 48_000), (160_000, 192_000)),
                  ((16_000, 48_000), (160_000, 192_000)))  # fmt: skip
    words = (Word(1.2, 1.6, " one", 0.9), Word(1.6, 2.4, " two.", 0.9),
             Word(10.3, 10.8, " three", 0.9), Word(10.8, 11.5, " four.", 0.9))  # fmt: skip
    segment = Segment(id=3, seek=100, start=1.1, end=11.8, text=" one two. three four.",
                      tokens=(900, 1, 2, 3, 4, 901), words=words)  # fmt: skip

    def count_tokens(text: str) -> int:
        return len(text.split())

    before, after = _split_at_cuts(segment, piece, count_tokens)
    assert (before.start, before.end, before.text, before.tokens) == (1.1, 2.4, " one two.",
                                                                      (900, 1, 2))  # fmt: skip
    assert (after.start, after.end, after.text, after.tokens) == (10.3, 11.8, " three four.",
                                                                  (3, 4, 901))  # fmt: skip
    assert before.words == words[:2] and after.words == words[2:]
    # Words on one side of the cut, or a piece read in one part: the segment as it was.
    one_side = dataclasses.replace(segment, words=words[:2])
    assert list(_split_at_cuts(one_side, piece, count_tokens)) == [one_side]
    whole = Piece(16_000, 192_000, ((16_000, 192_000),))
    assert list(_split_at_cuts(segment, whole, count_tokens)) == [segment]


def test_times_at_a_join_or_in_a_pause_stay_inside_their_segment():
    """A piece that read 1–3 s and 10–12 s of a recording, speech heard at 1–2.4 s and 10–12 s.
    Whisper's segment ends at the join (its end is moved back out of the pause) and its last
    word, of no length, sits exactly at the join: mapped as it was, the word went after the cut
    and the segment was split there, its last part ending before it started (held-out
    recordings, tiny.en: a segment from 38.47 s to 36.39 s in `verbose_json`)."""
    piece = Piece(16_000, 192_000, ((16_000, 38_400), (160_000, 192_000)),
                  ((16_000, 48_000), (160_000, 192_000)))  # fmt: skip
    words = (Word(0.2, 1.0, " one", 0.9), Word(2.0, 2.0, " two.", 0.9))
    segment = Segment(id=0, seek=0, start=0.2, end=2.0, text=" one two.", tokens=(1, 2),
                      words=words)  # fmt: skip
    shifted = _shifted(segment, piece, new_id=0)
    assert (shifted.start, shifted.end) == (1.2, 2.4)  # out of the pause after the speech
    assert [(w.start, w.end) for w in shifted.words] == [(1.2, 2.0), (2.4, 2.4)]
    [whole] = _split_at_cuts(shifted, piece, lambda text: len(text.split()))
    assert whole == shifted
    # A segment of no length at the join stays at the end of the part before it (it mapped
    # to 10 s as a start and 3 s as an end).
    empty = dataclasses.replace(segment, start=2.0, end=2.0, words=(words[1],))
    moved = _shifted(empty, piece, new_id=1)
    assert (moved.start, moved.end) == (3.0, 3.0)
    assert [(w.start, w.end) for w in moved.words] == [(3.0, 3.0)]


def test_short_clips_take_the_unchanged_path(server: Any, speech: dict[str, Clip]):
    """Up to 30 s nothing is cut: the text is exactly the raw engine's."""
    model = server.service._models[MODEL].transcriber
    for clip_id in ("jfk_inaugural_1961", "ls_1089-134691-0001", "sphinx_goforward"):
        audio = decode_pcm16(speech[clip_id].bytes())
        options = TranscriptionOptions(language="en")
        raw = "".join(s.text for s in model.transcribe(audio, options).segments)
        cut = "".join(s.text for s in transcribe_long(model, audio, options).segments)
        assert cut == raw


def test_the_pieces_of_a_long_recording_are_read_in_short_windows(
    server: Any, speech: dict[str, Clip], monkeypatch: pytest.MonkeyPatch
):
    """The first text comes after one stretch of speech, read in a short window (the engine's
    `short_window`: about half the time); every other piece, and what is read again, asks for
    it too (the engine cuts a piece's last window, which holds less than a whole one's audio).
    A recording of one piece is a short clip, read as the raw engine reads it."""
    model = server.service._models[MODEL].transcriber
    asked: list[bool] = []
    transcribe = model.transcribe

    def noting(audio: np.ndarray, options: TranscriptionOptions) -> Any:
        asked.append(options.short_window)
        return transcribe(audio, options)

    monkeypatch.setattr(model, "transcribe", noting)
    pause = np.zeros(2 * SAMPLE_RATE, dtype=np.int16)
    names = ("jfk_inaugural_1961", "sphinx_goforward", "ls_3752-4944-0000", "ls_2412-153948-0000")
    clips = [speech[name] for name in names]  # 37 s: over 30 s, a recording is cut in pieces
    audio = np.concatenate([part for c in clips for part in (pause, decode_pcm16(c.bytes()))])
    text = " ".join(
        s.text for s in transcribe_long(model, audio, TranscriptionOptions("en")).segments
    )
    assert all(asked), asked
    assert len(asked) >= 2, "read in more than one piece"
    assert normalize_text(text).startswith(normalize_text(clips[0].text)), text
    asked.clear()
    clip = decode_pcm16(clips[0].bytes())
    list(transcribe_long(model, clip, TranscriptionOptions("en")).segments)
    assert asked == [False]


def test_pcm16_storage_matches_float_decoding(speech: dict[str, Clip]):
    raw = speech["librivox_shakespeare_sonnets_1-3"].bytes()
    pcm = decode_pcm16(raw)
    floats = decode_audio(raw)
    assert pcm.dtype == np.int16 and pcm.shape == floats.shape
    assert np.abs(pcm / 32767.0 - floats).max() < 1.5 / 32767


# --- accuracy and timestamps of the long run
@pytest.fixture(scope="module")
def long_run(openai_client: Any, server: Any, recording: Recording) -> tuple[Any, float, int]:
    """The whole 10-minute file, how long it took, and how many windows the model read."""
    batcher = server.service._models[MODEL].transcriber.batcher
    windows = batcher.stats.windows
    started = time.monotonic()
    with recording.path.open("rb") as f:
        result = openai_client.audio.transcriptions.create(
            model=MODEL,
            file=("joined.flac", f, "audio/flac"),
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            timeout=3600,
        )
    return result, time.monotonic() - started, batcher.stats.windows - windows


def words_by_clip(words: list[Any], placed: tuple[Placed, ...]) -> dict[str, list[Any]]:
    """Each recognised word goes to the clip its middle falls in (1 s of slack either side)."""
    found: dict[str, list[Any]] = {p.clip.id: [] for p in placed}
    for word in words:
        middle = (word.start + word.end) / 2
        owner = next((p for p in placed if p.start - 1.0 <= middle <= p.end + 1.0), None)
        assert owner is not None, f"word {word.word!r} at {middle:.1f} s is in a pause"
        found[owner.clip.id].append(word)
    return found


def test_long_run_is_as_accurate_as_the_clips_one_by_one(
    long_run: tuple[Any, float, int], recording: Recording, one_by_one: dict[str, str]
):
    result, _, _ = long_run
    assert abs(result.duration - recording.duration) < 0.1
    by_clip = words_by_clip(result.words, recording.placed)
    references = [p.clip.text for p in recording.placed]
    joined = [" ".join(w.word.strip() for w in by_clip[p.clip.id]) for p in recording.placed]
    alone = [one_by_one[p.clip.id] for p in recording.placed]
    long_wer, alone_wer = corpus_wer(references, joined), corpus_wer(references, alone)
    print(f"\nWER long run {long_wer:.4f}, clips one by one {alone_wer:.4f}")
    # The bound: within 10% of the clips alone, or one point (on 440 words, 10% of
    # 3.6% is under two words; tiny.en's long run differs by three, one way or the other, with
    # the previous text it is given).
    assert long_wer <= max(1.1 * alone_wer, alone_wer + 0.01), (long_wer, alone_wer)
    # Words are neither lost nor doubled at the joins: the long run's word count per clip is
    # close to the one-by-one count.
    for placed, text, single in zip(recording.placed, joined, alone, strict=True):
        n, m = len(normalize_text(text).split()), len(normalize_text(single).split())
        assert abs(n - m) <= max(2, 0.1 * m), (placed.clip.id, text, single)


def test_the_text_does_not_depend_on_which_pieces_meet_in_a_batch(
    server: Any, recording: Recording, monkeypatch: pytest.MonkeyPatch
):
    """Pieces read side by side batch their beam searches when they meet, and which meet
    depends on the machine's load; what the model is asked, and so the text, must not. Five
    minutes of the recording, read once with the pieces in step and once with nobody waiting
    for anybody (at temperature 0: a fallback's sampling would differ anyway)."""
    batcher = server.service._models[MODEL].transcriber.batcher
    audio = recording.samples[: 300 * SAMPLE_RATE]
    options = TranscriptionOptions(language="en", temperature=0.0)
    prompts: list[tuple[int, ...]] = []  # as the CTranslate2 model gets them

    class Recorder:
        def __init__(self, model: Any) -> None:
            self.model = model

        def generate(self, features: Any, batch: list[list[int]], **options: Any) -> Any:
            prompts.extend(tuple(prompt) for prompt in batch)
            return self.model.generate(features, batch, **options)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.model, name)

    monkeypatch.setattr(batcher, "_model", Recorder(batcher._model))

    def read() -> tuple[list[str], Counter[tuple[int, ...]], int]:
        prompts.clear()
        before = Counter(batcher.stats.batches)
        model = server.service._models[MODEL].transcriber
        texts = [segment.text for segment in transcribe_long(model, audio, options).segments]
        batched = Counter(batcher.stats.batches) - before
        met = sum(n for (kind, size), n in batched.items() if kind == "generate" and size > 1)
        return texts, Counter(prompts), met

    in_step, asked_in_step, met_in_step = read()
    monkeypatch.setattr(batching, "SIBLING_WAIT_SECONDS", 0.0)
    apart, asked_apart, met_apart = read()
    assert met_in_step > met_apart, (met_in_step, met_apart)
    assert asked_apart == asked_in_step
    assert apart == in_step


def test_each_clip_is_found_where_it_sits(long_run: tuple[Any, float, int], recording: Recording):
    result, _, _ = long_run
    by_clip = words_by_clip(result.words, recording.placed)
    for placed in recording.placed:
        words = by_clip[placed.clip.id]
        assert words, f"nothing recognised in {placed.clip.id}"
        assert words[0].start >= placed.start - 1.0, (placed, words[0])
        assert words[-1].end <= placed.end + 1.0, (placed, words[-1])
    segments = result.segments
    assert [s.id for s in segments] == list(range(len(segments)))
    assert all(s.start <= s.end for s in segments)
    for before, after in itertools.pairwise(segments):
        assert before.start <= after.start
        assert after.start >= before.end - 0.5  # no stretch of audio is told twice
    # Where a piece left most of a long pause out, a segment ends (Whisper mostly ends it there
    # by itself; one it ran across is split), so subtitles do not stay up through the silence.
    cuts = [
        (end / SAMPLE_RATE, start / SAMPLE_RATE)
        for piece in plan_pieces(recording.samples, SegmentationOptions())
        for (_, end), (start, _) in itertools.pairwise(piece.read)
    ]
    across = [s for s in segments if any(s.start < a and s.end > b for a, b in cuts)]
    assert len(cuts) > 5 and not across, (cuts, across)


# --- streaming and going away
STREAMED = (  # 80 s of reading, read twice, with short pauses: several clips share each piece
    "ls_2412-153948-0000", "ls_2412-153948-0001", "ls_2412-153948-0002", "ls_1089-134686-0000",
    "ls_1272-141231-0002", "ls_1995-1837-0001", "ls_1988-24833-0001", "librivox_sns01_0870",
    "librivox_sns01_0920",
)  # fmt: skip


def test_chat_stream_sends_each_piece_as_it_is_recognised(
    server: Any, speech: dict[str, Clip], one_by_one: dict[str, str]
):
    """MiMo's streaming chat on three minutes: text arrives as it is read, in order, while later
    pieces are read beside it, and the whole is as good as the clips read one by one (joins
    inside and between pieces lose nothing)."""
    clips = [speech[i] for i in STREAMED] * 2
    samples, _ = join_clips(clips, (0.6, 1.5, 2.5))
    pieces = len(list(plan_pieces(samples, SegmentationOptions())))
    wav = io.BytesIO()
    with av.open(wav, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    data_url = "data:audio/wav;base64," + base64.b64encode(wav.getvalue()).decode()
    service = server.service
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": data_url}}]}],
        "asr_options": {"language": "en"},
        "stream": True,
    }  # fmt: skip
    before = service.pieces_started
    started = time.monotonic()
    arrivals: list[tuple[float, int]] = []
    text = ""
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=3600) as r:
        assert r.status_code == 200
        for event in sse_events(r.iter_lines()):
            delta = event["choices"][0]["delta"].get("content") if event["choices"] else None
            if delta:
                arrivals.append((time.monotonic() - started, service.pieces_started - before))
                text += delta
    total = time.monotonic() - started
    # The first stretch alone, then two pieces or more read at once (the later one's text
    # waits for the earlier one's).
    assert pieces >= 3
    # The first text came while the model had started at most the second of the pieces (and
    # the ones read beside it), and text kept coming, piece by piece and within a piece.
    parallel = parallel_pieces(service._models[MODEL].transcriber)
    assert arrivals[0][1] <= 1 + parallel, arrivals
    bursts = 1 + sum(b - a > 0.25 for (a, _), (b, _) in itertools.pairwise(arrivals))
    assert bursts >= 4 and len({count for _, count in arrivals}) >= 2, arrivals
    print(f"\n{pieces} pieces: first delta after {arrivals[0][0]:.1f} s of {total:.1f} s")
    assert arrivals[0][0] < 0.6 * total
    alone = corpus_wer([c.text for c in clips], [one_by_one[c.id] for c in clips])
    joined = corpus_wer([" ".join(c.text for c in clips)], [text])
    print(f"WER streamed in pieces {joined:.4f}, clips one by one {alone:.4f}")
    assert joined <= 1.1 * alone + 0.005, (joined, alone)


def test_client_leaving_mid_stream_stops_the_work(
    server: Any,
    recording: Recording,
    long_run: tuple[Any, float, int],
    monkeypatch: pytest.MonkeyPatch,
):
    """Disconnect after the first delta: the engine stops within a piece, long before the end."""
    service = server.service
    pieces = len(list(plan_pieces(recording.samples, SegmentationOptions())))
    batcher = service._models[MODEL].transcriber.batcher
    before = service.pieces_started
    windows_before = batcher.stats.windows
    # The windows the model had read when the engine gave its first segment (counted in the
    # server: by the time the client has the delta, the model has gone on reading).
    read_at_first: list[int] = []
    reading = transcription.transcribe_long

    def counted(*args: Any, **kwargs: Any) -> Any:
        result = reading(*args, **kwargs)

        def segments() -> Iterator[Segment]:
            for segment in result.segments:
                if not read_at_first:
                    read_at_first.append(batcher.stats.windows - windows_before)
                yield segment

        return dataclasses.replace(result, segments=segments())

    monkeypatch.setattr(transcription, "transcribe_long", counted)
    started = time.monotonic()
    with (
        httpx.Client(timeout=600) as client,
        recording.path.open("rb") as f,
        client.stream(
            "POST",
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("joined.flac", f, "audio/flac")},
            data={"model": MODEL, "language": "en", "stream": "true"},
        ) as response,
    ):
        assert response.status_code == 200
        first = next(e for e in sse_events(response.iter_lines()) if e.get("delta"))
        first_delta = time.monotonic() - started
        read_first = read_at_first[0]
    # The connection is closed here, mid-stream.
    assert first["type"] == "transcript.text.delta"
    _, long_total, whole = long_run
    print(
        f"\n10-min file: first delta after {first_delta:.1f} s and {read_first} windows; "
        f"whole run took {long_total:.1f} s and {whole} windows"
    )
    # The first text came once the model had read at most 15% of the file's windows (the
    # issue's target for the first text; counted in the model's work, not in seconds, which
    # on tiny.en are mostly the upload and decoding, and move with the machine's load).
    assert read_first <= 0.15 * whole, (read_first, whole)

    deadline = time.monotonic() + 120
    while service.scheduler.admitted and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.scheduler.admitted == 0, "the job is still running after the client left"
    done = service.pieces_started - before
    time.sleep(1.0)
    assert service.pieces_started - before == done  # and nothing more was started
    # The first piece, the pieces read beside the next one, and at most one more.
    assert done <= 2 + parallel_pieces(service._models[MODEL].transcriber), (done, pieces)
    # The pieces started stopped at their next model call: the model read less than half the
    # windows that the whole file takes (a piece is several windows).
    windows = batcher.stats.windows - windows_before
    assert windows * 2 < whole, (windows, whole)


# --- chunking_strategy
def test_chunking_strategy_values():
    default = SegmentationOptions(enabled=False)
    assert parse_chunking_strategy(None, default) == default
    assert parse_chunking_strategy("auto", default) == SegmentationOptions()
    assert parse_chunking_strategy('"auto"', default).enabled
    vad = parse_chunking_strategy(
        {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 100,
         "silence_duration_ms": 800},
        default,
    )  # fmt: skip
    assert (vad.enabled, vad.threshold, vad.speech_pad_ms, vad.min_silence_ms) == (
        True, 0.6, 100, 800,
    )  # fmt: skip
    assert parse_chunking_strategy('{"type": "server_vad"}', default).enabled
    for bad in ("sometimes", "{", {"type": "fixed"}, {"type": "server_vad", "threshold": 2},
                {"type": "server_vad", "silence_duration_ms": "long"},
                {"type": "server_vad", "speed": 1}, ["auto"]):  # fmt: skip
        with pytest.raises(InvalidRequest) as caught:
            parse_chunking_strategy(bad, default)
        assert caught.value.param == "chunking_strategy"


def test_sonnets_cut_where_the_reader_pauses(speech: dict[str, Clip]):
    """A server_vad request with a longer pause rule still cuts the reading into stretches of
    at most one 30 s window, in pieces no longer than the server's."""
    audio = decode_pcm16(speech["librivox_shakespeare_sonnets_1-3"].bytes())
    strict = parse_chunking_strategy(
        {"type": "server_vad", "silence_duration_ms": 1500}, SegmentationOptions()
    )
    pieces = list(plan_pieces(audio, strict))
    assert all(p.seconds <= strict.max_piece_seconds for p in pieces)
    stretches = [(start, end) for piece in pieces for start, end in piece.speech]
    assert all(end - start <= 30 * SAMPLE_RATE for start, end in stretches)
    assert len(stretches) >= 6 and pieces[0].seconds <= 30


def test_chunking_strategy_reaches_the_engine_through_the_sdk(
    openai_client: Any, server: Any, speech: dict[str, Clip], tmp_path: Path
):
    """Three short clips 14 s apart (40+ s, so it is cut): "auto" reads two pieces (the first
    clip alone, then the other two with the pause between them left out); a server_vad
    threshold no speech reaches reads none; a bad value is a 400 naming the field."""
    import openai

    clips = [speech[i] for i in ("sphinx_goforward", "ls_1089-134691-0000", "sphinx_cards_005")]
    samples, _ = join_clips(clips, (14.0,))
    path = tmp_path / "three.flac"
    write_flac(path, samples)
    service = server.service

    def send(strategy: Any) -> tuple[str, int]:
        before = service.pieces_started
        with path.open("rb") as f:
            text = openai_client.audio.transcriptions.create(
                model=MODEL, file=f, language="en", response_format="text",
                chunking_strategy=strategy,
            )  # fmt: skip
        return str(text), service.pieces_started - before

    text, pieces = send("auto")
    assert pieces == 2 and "forward" in text.lower() and "spades" in text.lower(), (pieces, text)
    text, pieces = send({"type": "server_vad", "threshold": 1.0})
    assert pieces == 0 and text.strip() == "", (pieces, text)
    with pytest.raises(openai.BadRequestError) as caught:
        send({"type": "server_vad", "threshold": 7})
    assert caught.value.param == "chunking_strategy"
