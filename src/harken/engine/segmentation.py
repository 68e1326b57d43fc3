"""Where to cut long audio: pieces of up to two minutes, cut in pauses.

Silero VAD (bundled with faster-whisper) finds the speech, in stretches of at most one 30 s
window (one that runs on longer is cut at its last short pause, or at its quietest moment).
The first stretch is a piece of its own, so that the first text of a stream is not held back.
Later stretches are joined into pieces whose audio is at most `max_piece_seconds` long. The
model reads a piece as it reads any audio: 30 s windows one after another, each carrying the
previous window's text. Cutting between pieces only where nobody speaks means no word is split
at a seam, and pieces of several windows keep what the raw engine gets right:

- Whisper often leaves the last utterance of a window for the next (its text ends before the
  audio). In a piece of one window that remainder costs a window of its own; in a longer piece
  the next window starts there anyway. On the turn-taking recordings, pieces of at most 30 s
  took 29 windows where the raw engine took 17; pieces of up to 120 s took 22, and lost fewer
  words (WER 3.2% against 3.8%: the previous text helps).
- A pause of up to `_MAX_GAP_SECONDS` inside a piece is read as it is; a longer one is
  shortened to `_KEPT_PAUSE_SECONDS` (besides the padding kept around speech): the model is not
  given long silences, where Whisper tends to invent text.
- A pause that is not quiet (sound at the level of the speech beside it, which VAD did not
  take for speech: reverberant speech, music) is read whole, as speech is, and can end a piece,
  where VAD gave it a faint chance of being speech, or none but it pauses as speech does; not
  where it is tones (a chord, telephone keys).
- Where one piece ends and the next begins, the pause is read by neither, but for sound in it
  that may be speech: that is read with the piece nearer to it.

So a piece reads one or more parts of the original audio, one after another. Each part's
timestamps map back by adding its offset.

Everything here works as a stream over the samples: the VAD runs block by block carrying its
recurrent state, and each piece is yielded as soon as the audio after it shows where it ends.
The first piece is therefore known after about its own length of audio, not after a pass over
the whole file, and no whole-file float32 copy is ever made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from harken.engine.runtime import prepare_ctranslate2

SAMPLE_RATE = 16_000
_WINDOW = 512  # Silero's window at 16 kHz
_CONTEXT = 64  # samples of the previous window Silero sees with each window
_BLOCK_WINDOWS = 1875  # VAD block: 60 s of audio per ONNX call
# The first block is short: the first piece waits on it (a 60 s block took 0.08-0.12 s on
# 2 cores, a 10 s one 0.015 s), and the first text on the first piece. Probabilities do not
# depend on where blocks end (the state and context carry over).
_FIRST_BLOCK_WINDOWS = 312
# Pauses longer than this are left out of what the model reads, all but `_KEPT_PAUSE_SECONDS`
# of them (half from each end): with a pause that long at the cut, Whisper ends its segment
# there. With only the speech padding, 13 of 32 segments of the 10-minute test recording
# (tiny.en) ran across a cut, and so across a long silence in subtitles; keeping 1 s or 2 s,
# 2 of 37-38. Word errors against the clips read alone (21 tiny.en, 18 base) were 24 and 14
# keeping 1 s, 22 and 20 keeping 2 s: within a few words either way.
_MAX_GAP_SECONDS = 3.0
_KEPT_PAUSE_SECONDS = 2.0
_KEPT_AT_EACH_END = int(_KEPT_PAUSE_SECONDS * SAMPLE_RATE) // 2
# Whisper's window: no stretch of speech (and so no first piece) is longer.
WINDOW_SECONDS = 30.0
# A recording is cut into at least this many pieces where its length allows. Eight (pieces of
# 83 s on an 11-minute recording, all read in step) was no faster, and lost more at the joins:
# WER 4.2% against 3.2%.
_PIECES_AT_LEAST = 4
# Speech that runs on for a whole window without a pause VAD can find (talk over a bed of
# background voices, which VAD hears as speech too) is cut at the quietest 100 ms of its last
# this many samples: where it was cut before, mid-word, the words either side were lost.
_CUT_SEARCH = 8 * SAMPLE_RATE
# Silero does not hear all speech: reverberant speech (a far microphone in a hall, built apart
# from the tests) got probabilities of 0.01-0.27 over whole clips at the speakers' level, and
# the plan cut them out as long pauses: 38 words deleted where the raw engine, reading every
# second, deleted 10. So a pause that holds `_SOUNDING_SECONDS` or more of sound within
# `_SOUNDING_DB` of the speech beside it, which Silero gave a faint chance of being speech
# (`_FAINT_PROBABILITY` or more in `_FAINT_SHARE` of its windows or more), is read as speech
# is (`Piece.sound`); what the text leaves out of it is read again, as of speech. Such spans
# held 16-66% windows at 0.05 or more. Music and applause at the speakers' level between turns
# (125 s of 8.4 min) held 0-1%: read, they were read again too and took 1.9x the time, with
# nothing more in the text; they are left out as before. Pauses in the recordings of the
# benchmark and the tests hold sound far under the speakers (hiss and hum 25 dB and more).
# In a pause long enough to be cut, half a second is enough: over a telephone line (mu-law,
# built apart from the tests) Silero heard the start of a sentence and gave its end 0.05-0.24;
# 0.8 s of that end, in a pause of 4.6 s, was cut out with it ("but he could wait no longer").
# On 46 more recordings of 14 kinds the word errors were the same; with half a second in
# any pause, two noisy recordings moved by 10-20 words each way, one at 2.5x the time.
# So after the last stretch of speech, which nothing else reads: the last clip of another such
# recording, "eight of spades four of clubs seven of hearts", given 0.07-0.12, was not read.
_SOUNDING_SECONDS = 1.0
_SOUNDING_IN_A_CUT_SECONDS = 0.5
_SOUNDING_DB = 12.0
_ABOVE_FLOOR_DB = 6.0
# In a pause that would be cut, or after the last stretch, this much sound within `_SOUNDING_DB`
# of the speakers and `_ABOVE_FLOOR_DB` over the floor around it (so steady noise is not) is
# read whatever Silero says: over a telephone line it gave 0.00-0.01 to 12 s of a clip at the
# speakers' level ("and so my fellow Americans, ask not...", the 1961 recording).
_DEAF_SECONDS = 1.0
# ...if it falls this far under the speakers' level in this share of it or more, as speech does
# between words and phrases (that clip: 24%); a chord or a hum does not.
_BETWEEN_WORDS_DB = 20.0
_BETWEEN_WORDS_SHARE = 0.1
# ...and if it is not tones (`_tonality`), nor is any sound read so: DTMF digits keyed in the
# pauses of a telephone call (built apart from the tests) fall silent between digits as speech
# does between words, and read as speech (with what was read again around them) the recording
# took 2.6x the time. Their frames put 0.998 of their power in 8 of 257 frequency bins, a chord
# 0.9998; speech 0.70-0.93 (that clip 0.89; eight clips and passages, wide and telephone band).
# Silero gave some of those digits a faint chance too: with tones left out of every rule here,
# that recording took 34 s where it took 45 s before any of them (raw engine 25 s).
_TONE = 0.97
_TONE_BINS = 8
# Where one piece ends and the next begins, the pause is read by neither. Over a telephone line
# (built apart from the tests) Silero gave the first 0.7 s of a clip ("captain frere says",
# -17 to -26 dB) 0.10-0.28 and heard the rest: in the 2 s pause before, where a piece ended,
# "captain frere" was never read. So what a piece would read of such a pause is read with the
# piece nearer to it, where this much of it is sound that may be speech (within `_SOUNDING_DB`
# of the speakers, `_ABOVE_FLOOR_DB` over the floor, and given a faint chance by Silero). On 53
# recordings built apart, such sound held 0.16-0.52 s at 9 joins of 7 of them; at the joins of
# the noisy ones, the noise stayed under the floor's 6 dB.
_SOUNDING_AT_A_JOIN_SECONDS = 0.15
_FAINT_PROBABILITY = 0.05
_FAINT_SHARE = 0.1
# Without VAD, audio is still read in windows this long so that memory stays bounded.
_UNSEGMENTED_WINDOW_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class SegmentationOptions:
    """How long audio is cut into pieces; the defaults are the server's (config: HARKEN_VAD_*)."""

    enabled: bool = True
    # Silero speech probability at or above which a window is speech. Not Silero's usual 0.5:
    # on telephone-band speech (300-3400 Hz, MP3) Silero gives 0.2-0.5 to much of it, and at
    # 0.5 whole clips fell in what the plan took for long pauses, cut out unread (6 minutes of
    # turns 0.3-1.2 s apart, whisper-base: WER 13.0% with two clips lost, raw engine 9.8%; at
    # 0.3, 9.0%). Non-speech stays below it: white noise peaked at 0.24, hum at 0.16. On the
    # wide-band recordings, 0.3 and 0.5 were within a word or two of each other.
    threshold: float = 0.3
    min_silence_ms: int = 500  # a pause at least this long ends a stretch of speech
    speech_pad_ms: int = 200  # kept on each side of speech, so word edges are not clipped
    max_piece_seconds: float = 120.0  # the longest piece read at once (four windows)
    # Audio up to this long is read whole (VAD only tells whether and where there is speech).
    min_audio_seconds: float = 30.0
    # Lift quiet stretches of speech to the level of the loudest one in a window (leveling.py).
    level: bool = True


@dataclass(frozen=True, slots=True)
class Piece:
    """What the model reads at once: the span [start, end) of the original audio, in samples,
    less most of any long pause in it. `parts` are the spans it reads, in order (empty: the
    whole span); `speech` the stretches of speech VAD found in it (empty without VAD); `sound`
    what it reads in its pauses as speech is read, not being quiet (see `_sounding`)."""

    start: int
    end: int
    speech: tuple[tuple[int, int], ...] = ()
    parts: tuple[tuple[int, int], ...] = ()
    sound: tuple[tuple[int, int], ...] = ()

    @property
    def read(self) -> tuple[tuple[int, int], ...]:
        return self.parts or ((self.start, self.end),)

    @property
    def seconds(self) -> float:
        """The length of the audio the model reads."""
        return sum(end - start for start, end in self.read) / SAMPLE_RATE

    def local_speech(self) -> tuple[tuple[int, int], ...]:
        """The stretches of speech as spans of the piece's own audio (its parts joined)."""
        return self._local(self.speech)

    def local_sound(self) -> tuple[tuple[int, int], ...]:
        """`sound`, as spans of the piece's own audio."""
        return self._local(self.sound)

    def _local(self, found: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        spans = []
        begin = 0
        for start, end in self.read:
            for a, b in found:
                a, b = max(a, start), min(b, end)
                if a < b:
                    spans.append((begin + a - start, begin + b - start))
            begin += end - start
        return tuple(spans)

    def joined(self, after: Piece) -> Piece:
        """This piece and the one after it read as one, the pause between them read as the
        planner reads a pause (`plan_pieces`)."""
        first, *rest = after.read
        parts = (*_with_pause(self.read, *first), *rest)
        speech, sound = (*self.speech, *after.speech), (*self.sound, *after.sound)
        return Piece(self.start, after.end, speech, parts, sound)

    def samples(self, audio: np.ndarray) -> np.ndarray:
        """The piece's audio, its parts joined (a view when it has only one)."""
        if len(self.read) == 1:
            return audio[self.start : self.end]
        return np.concatenate([audio[start:end] for start, end in self.read])


def as_float32(samples: np.ndarray) -> np.ndarray:
    """16 kHz samples as float32 in [-1, 1] (int16 PCM is scaled; float input is passed on)."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32767.0
    return samples.astype(np.float32, copy=False)


def plan_pieces(audio: np.ndarray, options: SegmentationOptions) -> Iterator[Piece]:
    """The pieces to transcribe, in order, produced lazily as the audio is scanned.

    Audio in which VAD finds no speech gives no piece at all. Audio up to `min_audio_seconds`
    is one piece read whole, pauses and all. With segmentation off, fixed windows of ten
    minutes (cut at the quietest moment near their end): the model then runs its own
    sequential decoding inside each, as on short audio.
    """
    total = int(audio.shape[0])
    if not options.enabled:
        yield from _fixed_pieces(audio, _UNSEGMENTED_WINDOW_SECONDS)
        return
    pad = int(options.speech_pad_ms * SAMPLE_RATE / 1000)
    if total <= options.min_audio_seconds * SAMPLE_RATE:
        detector = SpeechDetector(
            threshold=options.threshold,
            min_silence_samples=int(options.min_silence_ms * SAMPLE_RATE / 1000),
        )
        found = tuple(_padded(detector.spans(audio), pad, total))
        if found:
            yield Piece(0, total, found)
        return
    # A shorter recording is cut into shorter pieces (down to one window), so that it still
    # gives several to read at once: 90 s in one piece read window after window measured
    # 1.5x the raw engine's time, in 30 s pieces 1.1x.
    piece_seconds = max(WINDOW_SECONDS, total / SAMPLE_RATE / _PIECES_AT_LEAST)
    max_piece = int(min(options.max_piece_seconds, piece_seconds) * SAMPLE_RATE)
    # A stretch of speech never exceeds one window (nor one piece) once padded.
    longest = min(max_piece, int(WINDOW_SECONDS * SAMPLE_RATE))
    detector = SpeechDetector(
        threshold=options.threshold,
        min_silence_samples=int(options.min_silence_ms * SAMPLE_RATE / 1000),
        max_speech_samples=longest - _WINDOW - 2 * pad,
    )
    spans = _sounding(_padded(detector.spans(audio), pad, total), audio, detector, pad, longest)
    # The first stretch of speech is a piece of its own, so that the first text of a stream
    # comes as soon as it is read instead of after a window filled with speech.
    first = next(spans, None)
    if first is None:
        return
    start, end, _ = first  # always speech
    current = Piece(start, end, ((start, end),), ((start, end),))
    yield current
    ended = True  # `current` is yielded: nothing more joins it
    for start, end, heard in spans:
        speech, sound = (((start, end),), ()) if heard else ((), ((start, end),))
        if not ended:
            parts = _with_pause(current.read, start, end)
            if sum(b - a for a, b in parts) <= max_piece:
                speech, sound = (*current.speech, *speech), (*current.sound, *sound)
                current = Piece(current.start, end, speech, parts, sound)
                continue
        # A piece ends here: the pause before the next is read by neither, but for what in it
        # may be speech, read with the piece nearer to it.
        leading: list[Piece] = []
        for (a, b), nearer_before in _at_a_join(audio, current, (start, end), detector, pad):
            unread = Piece(a, b, (), ((a, b),), ((a, b),))
            joined = current.joined(unread)
            if nearer_before and not ended and joined.seconds * SAMPLE_RATE <= max_piece:
                current = joined
            else:
                leading.append(unread)
        if not ended:
            yield current
        current, ended = Piece(start, end, speech, ((start, end),), sound), False
        for lead in reversed(leading):
            current = lead.joined(current)
    if not ended:
        yield current


class SpeechDetector:
    """Silero VAD over a stream of samples: the speech probabilities block by block (the
    recurrent state and the 64-sample context carried across blocks), turned into stretches of
    speech by the same rules as faster-whisper's `get_speech_timestamps`."""

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        neg_threshold: float | None = None,
        min_silence_samples: int = 8000,
        max_speech_samples: float = float("inf"),
        min_speech_samples: int = 0,
    ) -> None:
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01) if neg_threshold is None else neg_threshold
        self.min_silence_samples = min_silence_samples
        self.max_speech_samples = max_speech_samples
        self.min_speech_samples = min_speech_samples
        self._seen = np.zeros(0, dtype=np.float32)  # each window's probability, as `spans` runs

    def share_above(self, start: int, end: int, probability: float) -> float:
        """The share of the windows of audio[start:end] that `spans` has gone past whose
        speech probability is `probability` or more."""
        seen = self._seen[start // _WINDOW : -(-end // _WINDOW)]
        return float(np.mean(seen >= probability)) if seen.shape[0] else 0.0

    def probabilities(self, audio: np.ndarray) -> Iterator[np.ndarray]:
        """Speech probability of each 512-sample window, a block of windows at a time."""
        stream = SpeechProbabilities()
        begin, block = 0, _FIRST_BLOCK_WINDOWS * _WINDOW
        while begin < audio.shape[0]:
            yield stream.feed(audio[begin : begin + block])
            begin, block = begin + block, _BLOCK_WINDOWS * _WINDOW
        yield stream.flush()

    def spans(self, audio: np.ndarray) -> Iterator[tuple[int, int]]:
        """Unpadded stretches of speech as (start, end) samples, each yielded once it ends."""
        total = int(audio.shape[0])
        triggered = False
        start = 0
        temp_end = prev_end = next_start = 0
        i = 0
        self._seen = np.zeros(-(-total // _WINDOW), dtype=np.float32)
        for probs in self.probabilities(audio):
            self._seen[i : i + probs.shape[0]] = probs
            for prob in probs.tolist():
                position = _WINDOW * i
                i += 1
                if prob >= self.threshold and temp_end:
                    temp_end = 0
                    if next_start < prev_end:
                        next_start = position
                if prob >= self.threshold and not triggered:
                    triggered = True
                    start = position
                    continue
                if triggered and position - start > self.max_speech_samples:
                    # Too long: cut at the last pause of ~100 ms if there was one, else at the
                    # quietest moment of the last few seconds.
                    if prev_end:
                        yield start, prev_end
                        if next_start < prev_end:
                            triggered = False
                        else:
                            start = next_start
                        prev_end = next_start = temp_end = 0
                    else:
                        cut = _quietest(audio, max(start, position - _CUT_SEARCH), position)
                        yield start, cut
                        start = cut
                        prev_end = next_start = temp_end = 0
                if prob < self.neg_threshold and triggered:
                    if not temp_end:
                        temp_end = position
                    if position - temp_end > 98 * SAMPLE_RATE // 1000:
                        prev_end = temp_end
                    if position - temp_end < self.min_silence_samples:
                        continue
                    if temp_end - start > self.min_speech_samples:
                        yield start, temp_end
                    prev_end = next_start = temp_end = 0
                    triggered = False
        if triggered and total - start > self.min_speech_samples:
            yield start, total


def load_speech_model() -> None:
    """Load Silero VAD now rather than on the first long recording or live session (0.12 s
    on 2 cores, otherwise added to that request's first text)."""
    prepare_ctranslate2()  # faster_whisper loads CTranslate2 with its VAD
    from faster_whisper.vad import get_vad_model

    get_vad_model()


class SpeechProbabilities:
    """Silero VAD over audio that arrives in pieces (a file block by block, or a live stream):
    the speech probability of each 512-sample window (32 ms) once the window is complete, with
    the recurrent state and the 64-sample context carried from one piece to the next."""

    WINDOW = _WINDOW

    def __init__(self) -> None:
        prepare_ctranslate2()  # faster_whisper loads CTranslate2 with its VAD
        from faster_whisper.vad import get_vad_model

        self._session = get_vad_model().session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the windows `samples` completes (16 kHz, int16 or float32)."""
        pending = np.concatenate([self._pending, as_float32(samples)])
        complete = pending.shape[0] // _WINDOW * _WINDOW
        self._pending = pending[complete:]
        return self._run(pending[:complete])

    def flush(self) -> np.ndarray:
        """The probability of the last, incomplete window (padded with silence), if any."""
        if not self._pending.shape[0]:
            return np.zeros(0, dtype=np.float32)
        last = np.pad(self._pending, (0, _WINDOW - self._pending.shape[0]))
        self._pending = np.zeros(0, dtype=np.float32)
        return self._run(last)

    def _run(self, samples: np.ndarray) -> np.ndarray:
        if not samples.shape[0]:
            return np.zeros(0, dtype=np.float32)
        windows = samples.reshape(-1, _WINDOW)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -_CONTEXT:]])
        batch = np.concatenate([contexts, windows], axis=1)
        out, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -_CONTEXT:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)


def _padded(spans: Iterable[tuple[int, int]], pad: int, total: int) -> Iterator[tuple[int, int]]:
    """Widen each stretch by `pad` on both sides; where two are closer than 2 × pad, they meet
    halfway (the padding rule of faster-whisper's VAD). One stretch of look-ahead."""
    previous: list[int] | None = None
    for start, end in spans:
        if previous is None:
            current = [max(0, start - pad), end]
        else:
            gap = start - previous[1]
            if gap < 2 * pad:
                previous[1] += gap // 2
                current = [max(0, start - gap // 2), end]
            else:
                previous[1] = min(total, previous[1] + pad)
                current = [max(0, start - pad), end]
            yield previous[0], previous[1]
        previous = current
    if previous is not None:
        yield previous[0], min(total, previous[1] + pad)


def _sounding(
    spans: Iterable[tuple[int, int]],
    audio: np.ndarray,
    detector: SpeechDetector,
    pad: int,
    longest: int,
) -> Iterator[tuple[int, int, bool]]:
    """Each stretch of speech as (start, end, True); and between two of them, and after the
    last (the end of the recording is read only so), speech VAD did not hear (`_faint_speech`)
    as (start, end, False), in spans of at most `longest`."""
    before: tuple[int, int] | None = None
    for start, end in spans:
        if before is not None and start - before[1] >= _SOUNDING_SECONDS * SAMPLE_RATE:
            yield from _sound_spans(audio, before, (start, end), detector, pad, longest)
        yield start, end, True
        before = (start, end)
    if (
        before is not None
        and audio.shape[0] - before[1] >= _SOUNDING_IN_A_CUT_SECONDS * SAMPLE_RATE
    ):
        yield from _sound_spans(audio, before, None, detector, pad, longest)


def _sound_spans(
    audio: np.ndarray,
    before: tuple[int, int],
    after: tuple[int, int] | None,
    detector: SpeechDetector,
    pad: int,
    longest: int,
) -> Iterator[tuple[int, int, bool]]:
    """What `_faint_speech` finds between `before` and `after`, as (start, end, False) spans of
    at most `longest`."""
    found = _faint_speech(audio, before, after, detector, pad)
    if found is not None:
        a, b = found
        while b - a > longest:
            cut = _quietest(audio, a + longest - _CUT_SEARCH, a + longest)
            yield a, cut, False
            a = cut
        yield a, b, False


def _faint_speech(
    audio: np.ndarray,
    before: tuple[int, int],
    after: tuple[int, int] | None,
    detector: SpeechDetector,
    pad: int,
) -> tuple[int, int] | None:
    """The span of the pause between two stretches of speech (or after the last, `after` None)
    that holds speech VAD did not hear, if any: at least `_SOUNDING_SECONDS`
    (`_SOUNDING_IN_A_CUT_SECONDS` in a pause that would be cut, and at the end) within
    `_SOUNDING_DB` of the quieter stretch (from the first such 20 ms frame to the last, widened
    by `pad`), of which `detector` gave at least `_FAINT_SHARE` of the windows
    `_FAINT_PROBABILITY` or more; or, in a pause that would be cut, that VAD gave no chance at
    all, if it is much like speech (`_speech_unheard`). Tones are not (`_tonality`)."""
    from harken.engine.leveling import floor_db, speech_level_db  # leveling imports this

    stretches = (before,) if after is None else (before, after)
    level = min(speech_level_db(as_float32(audio[a:b])) for a, b in stretches)
    pause_end = audio.shape[0] if after is None else after[0]
    cut = after is None or pause_end - before[1] > _MAX_GAP_SECONDS * SAMPLE_RATE
    at_least = _SOUNDING_IN_A_CUT_SECONDS if cut else _SOUNDING_SECONDS
    found = _sound_at_level(audio, before[1], pause_end, level, at_least, pad)
    if found is None:
        return None
    (start, end), sound = found
    if detector.share_above(start, end, _FAINT_PROBABILITY) >= _FAINT_SHARE:
        return start, end
    around = as_float32(audio[before[0] : pause_end if after is None else after[1]])
    if cut and _speech_unheard(sound, level, floor_db(around)):
        return start, end
    return None


def _sound_at_level(
    audio: np.ndarray,
    begin: int,
    finish: int,
    level: float,
    at_least: float,
    pad: int,
    floor: float = -np.inf,
) -> tuple[tuple[int, int], np.ndarray] | None:
    """Sound in audio[begin:finish] that may be speech, if there are `at_least` seconds of it
    within `_SOUNDING_DB` of `level` and at `floor` or above and it is not tones (`_tonality`):
    the span from the first such 20 ms frame to the last, widened by `pad` (within the region),
    and the sound itself (not widened)."""
    from harken.engine.leveling import span_at_level  # leveling imports this

    region = as_float32(audio[begin:finish])
    loud = span_at_level(region, level, _SOUNDING_DB, at_least, floor_db=floor)
    if loud is None:
        return None
    sound = region[loud[0] : loud[1]]
    if _tonality(sound) >= _TONE:
        return None
    return (max(begin, begin + loud[0] - pad), min(finish, begin + loud[1] + pad)), sound


def _speech_unheard(sound: np.ndarray, level: float, floor: float) -> bool:
    """Whether `sound`, in a pause that would be cut, is read whatever VAD says: at least
    `_DEAF_SECONDS` of it within `_SOUNDING_DB` of the speakers' `level` and `_ABOVE_FLOOR_DB`
    over the `floor` around it, and `_BETWEEN_WORDS_SHARE` of it `_BETWEEN_WORDS_DB` under
    `level` or more (pauses between words)."""
    from harken.engine.leveling import seconds_at_level, share_under

    loud = seconds_at_level(sound, level, _SOUNDING_DB, floor + _ABOVE_FLOOR_DB)
    between_words = share_under(sound, level, _BETWEEN_WORDS_DB)
    return loud >= _DEAF_SECONDS and between_words >= _BETWEEN_WORDS_SHARE


def _tonality(samples: np.ndarray) -> float:
    """How much of its power a sound puts in a few frequencies: over the 32 ms frames of
    `samples` within 20 dB of the loudest, the median share of a frame's power in its
    `_TONE_BINS` strongest of 257 frequency bins."""
    count = samples.shape[0] // _WINDOW
    if count == 0:
        return 0.0
    frames = samples[: count * _WINDOW].reshape(count, _WINDOW) * np.hanning(_WINDOW)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    total = power.sum(axis=1) + 1e-12
    decibels = 10.0 * np.log10(total)
    loud = decibels >= decibels.max() - 20.0
    strongest = np.sort(power, axis=1)[:, -_TONE_BINS:].sum(axis=1) / total
    return float(np.median(strongest[loud]))


def _at_a_join(
    audio: np.ndarray,
    before: Piece,
    after: tuple[int, int],
    detector: SpeechDetector,
    pad: int,
) -> list[tuple[tuple[int, int], bool]]:
    """Sound in the pause between the piece `before` and the stretch `after` that begins the
    next piece, where a piece would read it (`_with_pause`: all of a pause of up to
    `_MAX_GAP_SECONDS`, `_KEPT_PAUSE_SECONDS` of a longer one, half at each end), which may be
    speech VAD did not hear: `_SOUNDING_AT_A_JOIN_SECONDS` or more within `_SOUNDING_DB` of the
    quieter stretch either side and `_ABOVE_FLOOR_DB` over the floor around it (from the first
    such 20 ms frame to the last, widened by `pad`), of which `detector` gave at least
    `_FAINT_SHARE` of the windows `_FAINT_PROBABILITY` or more, and not tones (`_tonality`).
    Each span found comes with whether it is nearer to `before` than to `after`."""
    from harken.engine.leveling import floor_db, speech_level_db

    pause_start, pause_end = before.read[-1][1], after[0]
    if pause_end - pause_start < _SOUNDING_AT_A_JOIN_SECONDS * SAMPLE_RATE:
        return []
    last = max((*before.speech, *before.sound), key=lambda stretch: stretch[1])
    level = min(speech_level_db(as_float32(audio[a:b])) for a, b in (last, after))
    floor = floor_db(as_float32(audio[last[0] : after[1]])) + _ABOVE_FLOOR_DB
    regions: list[tuple[int, int, bool | None]] = (
        [(pause_start, pause_end, None)]  # read whole inside a piece
        if pause_end - pause_start <= _MAX_GAP_SECONDS * SAMPLE_RATE
        else [
            (pause_start, pause_start + _KEPT_AT_EACH_END, True),
            (pause_end - _KEPT_AT_EACH_END, pause_end, False),
        ]
    )
    found = []
    for begin, finish, with_before in regions:
        sound = _sound_at_level(
            audio, begin, finish, level, _SOUNDING_AT_A_JOIN_SECONDS, pad, floor
        )
        if sound is None:
            continue
        (start, end), _ = sound
        if detector.share_above(start, end, _FAINT_PROBABILITY) < _FAINT_SHARE:
            continue
        if with_before is None:
            with_before = start - pause_start < pause_end - end
        found.append(((start, end), with_before))
    return found


def _quietest(audio: np.ndarray, begin: int, end: int, frames: int = 5) -> int:
    """The middle of the quietest `frames` 20 ms frames in a row of audio[begin:end]."""
    frame = SAMPLE_RATE // 50
    samples = as_float32(audio[begin:end])
    count = samples.shape[0] // frame
    if count < frames:
        return end
    energy = np.mean(samples[: count * frame].reshape(count, frame) ** 2, axis=1)
    smoothed = np.convolve(energy, np.ones(frames), mode="valid")
    return begin + (int(np.argmin(smoothed)) + frames // 2) * frame + frame // 2


def _with_pause(
    parts: tuple[tuple[int, int], ...], start: int, end: int
) -> tuple[tuple[int, int], ...]:
    """`parts` followed by the span [start, end) after a pause: a pause of up to
    `_MAX_GAP_SECONDS` is read as it is, of a longer one `_KEPT_PAUSE_SECONDS` are kept."""
    (last_start, last_end), before = parts[-1], parts[:-1]
    if start - last_end <= _MAX_GAP_SECONDS * SAMPLE_RATE:
        return (*before, (last_start, end))
    return (*before, (last_start, last_end + _KEPT_AT_EACH_END), (start - _KEPT_AT_EACH_END, end))


def _fixed_pieces(audio: np.ndarray, window_seconds: float) -> Iterator[Piece]:
    """Windows of about `window_seconds`, each ended at the quietest 20 ms of its last 10 s."""
    total = int(audio.shape[0])
    window = int(window_seconds * SAMPLE_RATE)
    search = 10 * SAMPLE_RATE
    start = 0
    while start < total:
        end = start + window
        if end >= total:
            yield Piece(start, total)
            return
        cut = _quietest(audio, end - search, end, frames=1)
        yield Piece(start, cut)
        start = cut
