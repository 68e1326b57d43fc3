"""Long recordings through any Transcriber: piece by piece, as one lazy stream of segments.

Each piece (see `segmentation`) is at most a few model windows of audio, converted to float32
only while it is read, so memory does not grow with the length of the recording. Timestamps
are mapped back through the piece's parts (a time in a part moves by that part's offset);
pieces never overlap, so no word is read twice at a join, and every stretch of speech is inside
some piece.

What reading a piece involves, and why:
- Quiet stretches are lifted to the level of the loudest one in the piece first
  (`leveling`): Whisper takes a quiet voice beside a loud one for background.
- VAD is asked whether the text covers the speech. Whisper, reading a window where one speaker
  follows another, sometimes ends its text early or skips a turn (it treats what remains as
  done, and moves on a whole window); on held-out recordings that lost whole clips. Any
  stretch of speech of `_UNHEARD_SECONDS` or more that no segment covers (at a stretch's
  start, a turn's first words, `_UNHEARD_TURN_SECONDS`) is read again on its own, and its
  text put in its place; unless less than `_LOUD_SECONDS` of it (half of a shorter span)
  comes within `_BACKGROUND_DB` of the speech around it (`_CROWD_DB` over a crowd): a voice in the
  background, which Whisper rightly left out (the raw engine too); what stays within
  `_ABOVE_FLOOR_DB` of the piece's floor does not count (steady noise in the pauses). What is
  read again is read with the voices behind the speaker turned down: read alone, without the
  text before it, Whisper wrote them into the speaker's pauses.
- Where voices behind the speaker fill every pause (a piece that follows on, see `_follows_on`,
  and the first piece where the piece after it follows on from it), whatever is more than
  `_BACKGROUND_DB` under the speech around it is turned down in the whole piece before it is
  read, not only in what is read again (`leveling.turn_down_behind`), where what is behind
  never falls far under the speaker (`_DENSE_BED_DB`; not speakers talking over each other at
  their turns, whose quieter words it cut): read as they were, the
  voices went into the speaker's pauses ("Ten of clubs, and so my fellow America, seven of
  clubs", where the raw engine wrote the speaker's "And so my fellow America,"). Word errors
  summed over thirteen such recordings (whisper-base, one run each): 1108 -> 965, the raw
  engine 1125; 381 -> 322 on the four of them built apart from the others (raw 333).
- Text Whisper wrote without hearing it is dropped: a segment in a window the model itself
  doubted held speech (a high no-speech probability) that lies over no speech at all, or whose
  words come faster than anyone speaks. The second is Whisper repeating its prompt over the
  last fraction of a second of a piece (a recording built apart from the tests: two lines of a
  sonnet read a minute earlier, 14 words in 0.38 s; the fastest real segments of seven
  recordings came to 5.6 words a second). Words written over and over that fast are dropped
  whatever the model's doubt ("He's in charge." four times in the last 0.4 s of a piece, after
  a window that held "he's in charge here"). So is a segment that only repeats one just before
  it in the same stretch of audio (a decoding loop), and the text of a window that failed
  Whisper's checks at every temperature with far fewer words than its speech would hold: music
  VAD took for speech, around a speaker's first words; that window is not read again either.

Pieces are read independently of each other, each with only the caller's prompt (speakers taking
turns with quiet pauses between, the previous piece's text as prompt measured worse: WER 3.3% ->
4.4%), except where pieces follow on from one another (`_follows_on`: voices behind the speaker
fill every pause, so VAD hears one unbroken stretch and cut it for length): those are joined again
into pieces of up to two minutes, as even as they can be (`_joined_where_they_follow_on`), and each
is read with the text of the 10 s before it (`_PieceReader._lead_in`) as its first window's prompt.
Read without, Whisper took up the voices behind at the piece's start where the raw engine, reading
on from its previous text, kept to the speaker. Once any piece of the plan follows on, so is every
piece read from then on, also those cut at pauses (`_VoicesBehind`). Pieces are read several at once
(`Transcriber.parallel_windows`), each window after window as the raw engine reads a file, as
siblings (`batching.SiblingGroup`): those of their beam searches whose prompts have one length run
as one batch, and each window after a piece's first is read with the last 64 tokens of its previous
text (`_SIBLING_PREVIOUS_TOKENS`; a shorter one, such as a lead-in's, to a set length:
`batching.SHORTER_PREVIOUS_TOKENS`), so that nearly all of them meet (the text is the same whoever
meets; a caller's prompt is kept whole, and then so is Whisper's). On a 2-core CPU the raw engine's
cost is the beam search, token by token; eight windows' beam searches in one batch cost 0.62 s a
window against 1.0 s alone (whisper-base). The first piece is read alone, so that the first text
(and the language) comes after one stretch of speech, and in a window cut to its audio and 8 s of
padding (`TranscriptionOptions.short_window`), which the encoder reads in a fraction of a 30 s
window's time: the 1.5-minute benchmark file's first text after 0.57-0.59 s against 1.26-1.38 s
(the same text but for one capital letter; a recording of one piece, a short clip, is read as the
raw engine reads it); the others keep the same order in the stream. So is the last window of every
other piece, which holds what is left of it (a few seconds, where a piece is a little over a
window), and what is read again: the encoder's pass, one window at a time, is 40-45% of the time on
a 2-core CPU, and eight recordings built apart from the tests read 3.9% faster with the same word
errors (2.3 minutes of Mandarin, four pieces of 32 s: 34.2 s -> 25.6 s, 55 -> 53 character errors).
The piece at the head of the line is streamed as it is read, in step with the others: read at its
own pace, its beam searches ran beside the others' batch and split it (11 minutes of turns: 12 of
30 windows searched alone; in step, 3).

What each rule bought, measured, and what was tried and dropped: docs/long-recordings.md.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import difflib
import functools
import itertools
import logging
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from harken.engine.batching import SiblingGroup, cancel_scope, current_cancel_event
from harken.engine.leveling import (
    floor_db,
    level_speech,
    seconds_at_level,
    speech_level_db,
    turn_down_behind,
    turn_down_below,
)
from harken.engine.script import (
    FASTEST_WORDS_PER_SECOND,
    convert_segment,
    convert_text,
    converts,
    repeated_in_a_row,
    words_of,
)
from harken.engine.segmentation import (
    SAMPLE_RATE,
    WINDOW_SECONDS,
    Piece,
    SegmentationOptions,
    as_float32,
    plan_pieces,
)
from harken.engine.types import (
    ChineseScript,
    LanguageDetector,
    Segment,
    Transcriber,
    Transcription,
    TranscriptionInfo,
    TranscriptionOptions,
    Word,
)

log = logging.getLogger(__name__)

_UNHEARD_SECONDS = 1.0  # speech no word covers, at least this long, is read again
# The same at the start of a stretch of speech: Whisper skips a turn's first words, and where
# its text begins a second into the turn, they lay under `_UNHEARD_SECONDS` ("This should have
# been done", 1.1 s, lost over voices built apart from the tests, turns 3-25 s apart).
_UNHEARD_TURN_SECONDS = 0.6
_OFFSET = 0.003  # a recording whose mean is this far from zero (of full scale) has a DC offset
_HEARD_SLACK = 0.3  # Whisper's word and segment times are this loose
_SAID_BEFORE_SEGMENTS = 2  # segments given as the words before speech read alone that gave none
_REREAD_PAD = 0.2  # seconds of audio kept either side of speech read again
_OVERLAP_WORDS = 4  # the most words dropped from a reading again (`_without_words_around`)
_LONGEST_WORD_SECONDS = 2.0  # a word Whisper's alignment gives longer than this is stretched
_STRETCHED_WORD_END = 0.5  # what a stretched word covers at each end (see `_said`)
# Sound this much quieter than the stretch of speech it lies in is background. Background talk
# 18 dB under the speaker (a recording built apart from the tests), which VAD joins with the
# speaker's stretches, was left out 15-23 dB under them: read again, it added 73 words (WER
# 14.0% against the raw engine's 6.4%). Turns that were truly skipped: 0 dB (a quiet speaker's
# own stretch is levelled first, see `leveling`).
_BACKGROUND_DB = 12.0
# Speech left out is read again only if this much of it is at the level of the speech around
# it. Measured as a mean, a span of background that began with the last syllable of a word
# Whisper's times had ended early came to 7-11 dB under its stretch: read again, it gave words
# of the voices behind ("they might probably make themselves at home"). Such spans held 0.0-0.2
# s within 12 dB of their stretch; the turns truly skipped on the held-out recordings, 3.4-5.2 s.
_LOUD_SECONDS = 0.5
# ...counting only what rises this far above the piece's floor (`leveling.floor_db`, under which
# its quietest tenth lies). Steady noise within 12 dB of the speech fills every pause, and the
# plan reads such pauses as sound (see `Piece.sound`); the text leaves them out, and read again
# each gave no text or " ." over and over, sampled at every temperature, 2-10 s apiece. Clips
# over noise 5, 7 and 8 dB under them and the benchmark's turns over noise 10 dB under (built
# apart from the tests, whisper-base): 1.60x, 1.33x, 1.09x and 0.96x the raw engine's time,
# now 0.68x, 0.81x, 0.87x and 0.75x; the same text but for one word, and the turns 225 -> 215
# word errors (two quiet clips, 3 dB over the noise, went unread: "four queen of clubs", read
# again, had given "4 green of course"). Twelve recordings without such noise (the benchmark's,
# voices behind, crowds, faint speech) read the same, but for two crowds' sampled windows.
_ABOVE_FLOOR_DB = 6.0
# In what is read again, the voices behind the speaker are turned down this much: read alone,
# the speaker's pauses full of them, Whisper wrote them in ("ten of clubs and so my fellow
# America seven of clots ask not five five"; the raw engine, reading on from the text before,
# did not). With both, the benchmark's talk in the background went from WER 8.6% to 5.1% (raw
# engine 5.5%); recordings without voices behind read the same. Pieces with voices behind are
# read so as a whole (see the module's docstring): turned down by 12 dB instead, the thirteen
# recordings' errors summed to 966 against 973 (both judged against the whole piece's level).
_TURNED_DOWN_DB = 30.0
# ...but a piece that follows on is turned down so only where what fills it never falls far
# under the speaker: where its floor (`leveling.floor_db`, the quietest tenth of its frames) is
# within this of its loudest speech, a crowd babbling behind. Speakers who talk over each other
# at their turns (built apart from the tests: each clip begun 0.2-0.8 s before the last ended,
# -28 to -18 dB) also leave VAD no pause, and their pieces follow on; turned down, the quieter
# one's softer syllables went under the threshold and were cut out ("make themselves at home"
# read as "make themselves home"): five such recordings, whisper-base, 103 word errors against
# the raw engine's 80; read as they are, 67. Their pieces' floors lay 27-34 dB under their
# speech, as did those of one talker behind the speaker 10, 13 or 18 dB under (ten builds of
# `benchmarks/long_audio.py --background`: 594 word errors turned down, 595 not); three
# talkers 9-14 dB under gave 17-23 dB, where turning down keeps their words out (two builds
# 9 dB under: 96-113 and 88-90 word errors over three runs, read as they are 108 and 120).
_DENSE_BED_DB = 25.0
# In such a piece (a crowd behind the speaker), speech the text left out is read again only
# where `_LOUD_SECONDS` of it come within this of the speech around it, not `_BACKGROUND_DB`.
# Three voices 9 dB under the speaker rise within 12 dB of them in most pauses, and each pause
# was read again alone, giving the crowd's words ("That's a lot of time.", "I see there is a
# light dome.") or failing at every temperature, up to 25 s a piece. Such pauses held 0.0-0.3 s
# within 6 dB of the speaker (one 0.56 s); speech the text truly skipped (one voice 10 dB behind,
# the benchmark's), 0.6-1.1 s of 1.3-3.5 s. Three crowds 9 dB under, built apart from the tests
# (whisper-base, in one process): 16 readings again -> 1, 291 -> 230 word errors (the raw engine
# 272), 128 -> 68 s (the raw engine 62 s); four crowds 12 and 14 dB under read the same, 7-16%
# faster.
_CROWD_DB = 6.0
_NO_SPEECH = 0.6  # a doubtful segment (see `_made_up`) with this no-speech probability is dropped
# Whisper's own checks on a window's reading (faster-whisper's defaults): a reading below this
# mean log-probability, or above this compression ratio, is tried again at a higher temperature,
# and one that fails at every temperature is kept all the same.
_FAILED_LOGPROB = -1.0
_FAILED_COMPRESSION = 2.4
# A window whose reading failed those checks at every temperature and gave fewer words than
# this per second of the speech VAD found in it is dropped, and not read again: VAD took music
# for speech. On a recording built apart from the tests the first piece was 25 s of a pulsing
# chord and the first 1.3 s of a speaker; every reading failed, the last (temperature 1.0) wrote
# "Somehow we're weathered." at 1.6 s and "Somehow or other." at 8.4 s (the speaker's first
# words, read wrong and put 17-24 s early; 0.13-0.15 words a second), and the music, read again,
# gave "Somehow or other." once more. Dropped: WER 6.8-7.7% -> 5.2-5.9% (raw engine 5.7%), time
# 1.4x -> 1.1-1.3x the raw engine's. People say 2-3 words a second; on the benchmark's four
# recordings and four other held-out ones no window failed at every temperature. Words are
# `script.words_of`'s: each Chinese or Japanese character counts as one (one Japanese sentence
# said three times in a window, which fails the checks for compressing well, had counted as
# 3 words in 14 s of speech, and such windows were dropped: 3 sayings of 14 written).
_SPARSE_WORDS_PER_SECOND = 0.5
# Whisper writes a caption where it hears music ("[Music]" in the subtitles it learnt from);
# with the brackets and "♪" among the tokens it may not write (faster-whisper's default), the
# caption comes out as the word "Music". Over a telephone line (built apart from the tests),
# hold music between two callers was given 0.2-0.47 by Silero and read as speech, and
# whisper-base wrote "Music" three times (no-speech probability 0.51-0.62); the raw engine,
# reading the music with the text before it, wrote nothing there. A segment whose words are
# only such captions, where the model gave its window this no-speech probability or more, is
# not speech. On 74 other recordings built apart (music beds, chords and telephone keys among
# them) no segment was a caption, so nothing else reads differently. The price: someone who
# answers "Music." on its own, in a window the model doubted (short answers got 0.4-0.9 there,
# "Five, five." 0.86), is not written.
_CAPTIONS = frozenset({"music"})
_CAPTION_NO_SPEECH = 0.4
_LOOP_WORDS = 4  # a repeat this many words long or more is a decoding loop
_TOUCHING_SECONDS = 1.0  # a repeat this near the passage it repeats, or nearer, touches it
# ...unless its own audio, read alone, gives at least this share of its words, in order: read
# again, a sentence said twice comes out a word or two apart from the first reading (Mandarin
# clips said twice in a row, 0.8 and 1.3 s apart, whisper-base: "一二线城市渲染也处于调整中"
# read alone as "一二线尝试虽然也处于调整中", 9 of 13 characters), and asking for every word lost
# both second sayings. What a loop's span holds is other speech or none.
_SAID_SHARE = 0.5
_MAX_PARALLEL = 8  # pieces of one recording read at once
# Pieces read side by side read each window after the first with the last this many tokens of
# their previous text, so that their prompts have one length and their beam searches meet in a
# batch (CTranslate2 batches prompts whose <|startoftranscript|> sits at one position); a
# window's text is about 60-100 tokens, and Whisper's own prompts, of up to 223, rarely met.
# Whisper-base, uncut then cut in one process, twice: 11 min of turns 38.6/39.5 -> 33.3/33.2 s,
# 50 -> 48 word errors (raw engine 39.2 s, 63); the hour of the benchmark 126.7 -> 118.2 s,
# 227 -> 248 (the sonnets read with less context; 80 or 96 tokens did no better); its 7 min
# over a telephone line 27.1 -> 24.8 s, 112 -> 106. Held out, six 6-minute recordings (reverberant,
# quiet, clipped, tight pauses, narrow band, a meeting) 0.84-0.96x the time, the same word
# errors or fewer. 32 tokens lost words on the turns (WER 4.3-4.6% against 3.1-3.3% with 64 or
# more). A caller's prompt is never cut: with one, the pieces keep Whisper's own previous text.
# Pieces that follow on (voices behind) are cut too, now that they are read side by side (read
# on alone after the piece before them, they had no batch to meet and were not).
_SIBLING_PREVIOUS_TOKENS = 64
# A piece VAD took for speech this much of, from the end of the piece before it, follows on from
# that piece (see `_follows_on`). Where voices behind the speaker (8-25 dB under) never stop, the
# pieces came to 0.98-1.00; speakers taking turns, a telephone line, a music bed, pink noise 20 dB
# under, reverberation and a music intro: at most 0.96, mostly 0.73-0.89 (held-out recordings
# built apart from the tests, and the benchmark's). On five recordings with voices behind, reading
# such pieces after the one before, prompted (several runs; Whisper's reading varies from run to
# run where it is a close call): WER 38.4% -> 28.2% (voices 10 dB under; raw engine 22.7%),
# 12.5-14.1% -> 10.0% (15 dB; raw 9.6%), 5.1% -> 4.7% (18 dB), 16.2-17.4% -> 17.7-19.5% (12 dB;
# raw 20.4%), 6.5% -> 7.4-7.8% (25 dB, three of five pieces; raw 6.5%); 0.7-1.9x the time (read
# one after another; fewer re-reads on some).
_FOLLOWS_ON_SHARE = 0.98
# Pieces that follow on from one another are read as one piece spanning up to this long, side
# by side with the others, its first window prompted with the text of its lead-in
# (`_LEAD_IN_SECONDS`). Read one after another, each prompted with the last segment of the one
# before, a piece's first window often came out without timestamps or ended a third of the way
# in; joined, the model reads on with the text before it, as the raw engine does (ten recordings
# built like `--background`, whisper-base: one after another 533 word errors, joined 466, raw
# engine 603). Joined up to ten minutes and read after the piece before it, with its last words,
# a recording with voices behind all through was read one window after another, no faster than
# the raw engine. 10.9 min of clips over voices 13 dB under (built apart from the tests), then
# and now: 1.13x -> 0.73x the raw engine's time, 159 -> 150 word errors (raw engine 190-220);
# 10 dB under, another clip order, 1.16x -> 1.07x, 319 -> 321 (raw 337). Five of 3.5-4.9 min
# (the benchmark's at 10 and 13 dB under, crowds 9 and 14 dB under, another clip order 13 dB
# under): 478 -> 469 word errors, 176.3 -> 172.2 s (what is read again takes the time there).
_JOINED_SECONDS = 120.0
_JOINED_SAMPLES = int(_JOINED_SECONDS * SAMPLE_RATE)
# A run of pieces that follow on is joined once this much of it is known (so that the joins can
# be placed evenly) or it ends: the planner's pieces are read as they are found.
_RUN_SAMPLES = 4 * _JOINED_SAMPLES
# A piece that follows on is read with the text of this much audio before it (read alone, at
# temperature 0, in a short window: about a second) as its first window's prompt: the words the
# speaker was saying, the thread to keep where voices behind fill the pauses; and it need not
# wait for the piece before it to be read.
_LEAD_IN_SECONDS = 10.0
_LEAD_IN_SAMPLES = int(_LEAD_IN_SECONDS * SAMPLE_RATE)
_SHORTEST_LEAD_IN = SAMPLE_RATE  # less audio than this before a piece: no lead-in


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
    produced as their pieces are read. Audio in which VAD finds no speech gives no segment and
    costs no model call. `should_stop` is asked between pieces, so a job whose client went away
    stops even while pieces give no text; `on_piece` hears of each piece as it starts being
    read (progress, metrics, tests).
    """
    segmentation = options.segmentation or SegmentationOptions()
    duration = audio.shape[0] / SAMPLE_RATE
    audio = _without_offset(audio)
    pieces = plan_pieces(audio, segmentation)
    first = next(pieces, None)
    if first is None:
        language = options.language or "en"
        info = TranscriptionInfo(language, 1.0 if options.language else 0.0, duration)
        return Transcription(info=info, segments=iter(()))

    # Whether voices behind the speaker fill the first piece shows in the piece after it.
    second = next(pieces, None)
    behind = second is not None and _follows_on(second, first)
    if second is not None:
        pieces = itertools.chain([second], pieces)
    opening = _opening_language(transcriber, audio, options, (first, second))
    if opening is not None:
        options = dataclasses.replace(options, language=opening[0])
    reader = _PieceReader(transcriber, audio, options, segmentation.level, on_piece)
    # The first text of a recording of several pieces comes sooner for a short window; a
    # recording of one piece (a short clip) is read as the raw engine reads it.
    detected, segments = reader.start(first, behind, cut_short=second is not None)
    info = dataclasses.replace(detected, duration=duration)
    if opening is not None:
        info = dataclasses.replace(info, language_probability=opening[1])
    reader.options = dataclasses.replace(options, language=options.language or info.language)
    parallel = parallel_pieces(transcriber)
    voices = _VoicesBehind()
    later = _joined_where_they_follow_on(voices.watch(pieces, first))
    stream = _in_order(reader, first, segments, later, should_stop, parallel, voices)
    script = options.chinese_script or "simplified"
    converted = converts(info.language, script)
    if converted:
        stream = (convert_segment(segment, script) for segment in stream)
    said = _said_alone(transcriber, audio, reader.options, script if converted else None)
    return Transcription(info=info, segments=_numbered(_without_loops(stream, said)))


def _without_offset(audio: np.ndarray) -> np.ndarray:
    """The audio less its DC offset (a constant a sound card adds to every sample), where its
    mean is `_OFFSET` of full scale or more; else the audio itself. Levels measured with the
    offset count it as sound: every pause held sound at the speech's level, and was read as
    speech (6.2 min of clips 0.5-2 s apart, built apart from the tests, with 0.25 added:
    22 stretches read again, 73 word errors and 2.0x the raw engine's time, the raw engine 46
    errors; with the offset taken away, none read again, 36 errors, 0.75x)."""
    full = 32768.0 if audio.dtype == np.int16 else 1.0
    offset = float(np.mean(audio, dtype=np.float64))
    if abs(offset) < _OFFSET * full:
        return audio
    out = np.empty_like(audio)
    step = 60 * SAMPLE_RATE  # a minute at a time: no float copy of the whole recording
    for at in range(0, audio.shape[0], step):
        block = audio[at : at + step].astype(np.float32) - np.float32(offset)
        if audio.dtype == np.int16:
            block = np.clip(np.rint(block), -32768, 32767)
        out[at : at + step] = block
    log.info("removed a DC offset of %.4f of full scale", offset / full)
    return out


def _opening_language(
    transcriber: Transcriber,
    audio: np.ndarray,
    options: TranscriptionOptions,
    pieces: tuple[Piece, Piece | None],
) -> tuple[str, float] | None:
    """The language of the recording and its probability, detected on the speech of its
    first pieces, up to one window of it, where the caller did not name one and the first
    piece holds less; None where the first piece's own reading is left to tell.

    The first piece is the first stretch of speech, often a second or two. Told from that
    alone, the language went wrong where the raw engine tells it from its whole first window,
    and the whole recording was read in it (a Spanish reading that began with two words and a
    1.5 s pause: English, p = 0.61, every piece translated into English; told from the
    opening speech, Spanish, p = 0.95)."""
    if options.language is not None or not isinstance(transcriber, LanguageDetector):
        return None
    if not transcriber.multilingual:  # nothing to tell
        return None
    window = int(WINDOW_SECONDS * SAMPLE_RATE)
    parts = [piece.samples(audio) for piece in pieces if piece is not None]
    if parts[0].shape[0] >= window or len(parts) == 1:
        return None
    opening = as_float32(np.concatenate([parts[0], parts[1][: window - parts[0].shape[0]]]))
    language, probability = transcriber.detect_language(opening)
    log.info("language %s (p=%.2f), told from the first %.1f s of speech",
             language, probability, opening.shape[0] / SAMPLE_RATE)  # fmt: skip
    return language, probability


def parallel_pieces(transcriber: Transcriber) -> int:
    """How many pieces of one recording are read at once with this model."""
    return max(1, min(_MAX_PARALLEL, getattr(transcriber, "parallel_windows", 1)))


class _PieceReader:
    """Reads one piece: levels it, decodes it, reads again what the text left out, and maps the
    segments into the recording's time, each as soon as it is final. Safe to call from several
    threads at once."""

    def __init__(
        self,
        transcriber: Transcriber,
        audio: np.ndarray,
        options: TranscriptionOptions,
        level: bool,
        on_piece: Callable[[Piece], None] | None,
    ) -> None:
        self.transcriber = transcriber
        self.audio = audio
        self.options = options
        self.level = level
        self.on_piece = on_piece

    @property
    def falls_back(self) -> bool:
        """Whether a window is read again at higher temperatures when its reading fails
        (the engine's schedule), or only at the one the caller chose."""
        return self.options.temperature is None

    def read(
        self, piece: Piece, follows_on: bool = False, lead_in: bool = False
    ) -> Iterator[Segment]:
        """The piece's segments, as they are read. `follows_on`: the piece was cut from the one
        before it where VAD heard no pause (`_follows_on`): voices behind the speaker fill its
        pauses, which are turned down. `lead_in` (or `follows_on`): its first window is
        prompted with the text of its lead-in (`_lead_in`)."""
        before = self._lead_in(piece) if follows_on or lead_in else None
        _, segments = self.start(piece, follows_on, cut_short=True, before=before)
        return segments

    def _lead_in(self, piece: Piece) -> str | None:
        """The text of the `_LEAD_IN_SECONDS` of audio before the piece, read alone at
        temperature 0 in a short window; None where there is next to none, or where that
        reading loops (compresses more than Whisper allows): given to the piece as the words
        before it, a loop started one there. Over talk 13 dB under a speaker
        (`benchmarks/long_audio.py --background 13 --orders 3`, the third build), a card clip's
        lead-in read "7 of 8 of spades, 4 of close, ..." twice over, and the piece's first
        window then wrote "8 of hearts, 8 of hearts, ..." to 224 tokens at every temperature
        but the last: 58.9 s against the raw engine's 23.3 s. Without it, that window read
        right, and the recording took 36.1-37.5 s, 48 -> 43 word errors (the raw engine 57);
        eleven other recordings with voices behind had no lead-in that looped."""
        start = max(0, piece.start - _LEAD_IN_SAMPLES)
        if piece.start - start < _SHORTEST_LEAD_IN:
            return None
        alone = dataclasses.replace(self.options, prompt=None, temperature=0.0,
                                    word_timestamps=False, short_window=True)  # fmt: skip
        result = self.transcriber.transcribe(as_float32(self.audio[start : piece.start]), alone)
        segments = list(result.segments)
        if any(segment.compression_ratio > _FAILED_COMPRESSION for segment in segments):
            log.info("no lead-in for the piece at %.1f s: its reading loops",
                     piece.start / SAMPLE_RATE)  # fmt: skip
            return None
        return " ".join(s.text.strip() for s in segments).strip() or None

    def start(
        self,
        piece: Piece,
        behind: bool = False,
        cut_short: bool = False,
        before: str | None = None,
    ) -> tuple[TranscriptionInfo, Iterator[Segment]]:
        """Start reading: the info (language) once known, and the piece's segments as they
        are read. `behind`: voices behind the speaker fill the piece's pauses; they are turned
        down before it is read (`turn_down_behind`). `cut_short`: a window holding less than a
        whole one's audio is read in a window cut to it where the model can
        (`TranscriptionOptions.short_window`): the first text comes sooner, the last window
        costs less. `before`: the text said just before the piece, given to its first window
        as the words before it, after the caller's prompt."""
        if self.on_piece is not None:
            self.on_piece(piece)
        samples = as_float32(piece.samples(self.audio))
        speech = piece.local_speech()
        if self.level and speech:
            samples = level_speech(samples, speech)
        crowd = behind and bool(speech) and _fills_the_pauses(samples, speech)
        if crowd:
            samples = turn_down_behind(samples, speech, _BACKGROUND_DB, _TURNED_DOWN_DB)
        # Word times tell what the text covers (a segment's own times often span a turn it
        # skipped); they cost next to nothing, and are dropped again unless asked for.
        words = self.options.word_timestamps
        options = dataclasses.replace(self.options, word_timestamps=bool(speech) or words)
        prompt = " ".join(text for text in (options.prompt, before) if text) or None
        # Where a window's text ends early, Whisper taking what follows for no speech, VAD's
        # stretches tell the engine to read on (`TranscriptionOptions.speech`).
        spans = tuple((start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in speech)
        reading = dataclasses.replace(options, prompt=prompt, short_window=cut_short, speech=spans)
        result = self.transcriber.transcribe(samples, reading)

        def final(segments: Iterator[Segment]) -> Iterator[Segment]:
            for segment in segments:
                shifted = _shifted(segment, piece, segment.id)
                for part in _split_at_cuts(shifted, piece, self.transcriber.count_tokens):
                    yield part if words else dataclasses.replace(part, words=None)

        # Made-up text goes before the coverage check: it must not pass for the speech it hides.
        unreadable: list[tuple[float, float]] = []
        length = samples.shape[0] / SAMPLE_RATE
        listened = speech if speech or piece.sound else None  # no VAD: neither
        heard = _heard(result.segments, listened, length, unreadable if self.falls_back else None)
        if not speech:
            return result.info, final(heard)
        sound = piece.local_sound()
        with_unheard = self._with_unheard(
            samples,
            speech,
            sound,
            heard,
            unreadable,
            options,
            _CROWD_DB if crowd else _BACKGROUND_DB,
            before,
        )
        return result.info, final(with_unheard)

    def _with_unheard(
        self,
        samples: np.ndarray,
        speech: tuple[tuple[int, int], ...],
        sound: tuple[tuple[int, int], ...],
        segments: Iterator[Segment],
        unreadable: list[tuple[float, float]],
        options: TranscriptionOptions,
        within: float,
        before: str | None = None,
    ) -> Iterator[Segment]:
        """The segments, with those of each stretch of speech (or of `sound`, what the plan
        reads as speech, see `Piece.sound`) they left out read again on its own and put in
        time order among them. A stretch is judged once the text has gone past
        it (Whisper reads forward); a segment comes once no stretch before it is left to judge
        (at once, unless it reaches into a stretch not yet judged). What lies in `unreadable`
        (windows the model could not read at any temperature, filled in as the segments come)
        is not read again: alone, it gives the model nothing more. `within`: how near the
        speech around it left-out speech must come to be read again (`_BACKGROUND_DB`; in a
        piece over a crowd, `_CROWD_DB`). A segment that copies the text before it (`_copied`;
        `before`: the words said before the piece, its lead-in) is dropped where it comes, so
        that the speech under it counts as left out."""
        heard: list[Segment] = []
        held: list[Segment] = []  # in time order
        written: list[Segment] = []  # what has left `held`
        waiting = sorted((*speech, *sound))
        length = samples.shape[0] / SAMPLE_RATE
        floor = floor_db(samples) + _ABOVE_FLOOR_DB
        gives = _said_alone(self.transcriber, samples, options)  # read alone, gives it

        def settled() -> Iterator[Segment]:
            # What is read again starts no earlier than its stretch (less the padding), or than
            # a segment it replaces (see `_read_again`): one that reaches into the stretch.
            begins = waiting[0][0] / SAMPLE_RATE if waiting else float("inf")
            while held and held[0].start < begins - _REREAD_PAD and held[0].end <= begins:
                written.append(held.pop(0))
                yield written[-1]

        for segment in segments:
            passed = 0
            while passed < len(waiting) and waiting[passed][1] / SAMPLE_RATE <= segment.start:
                passed += 1
            if passed:
                stretches = waiting[:passed]
                self._read_again(samples, stretches, sound, heard, unreadable, held, length,
                                 options, floor, within, after=segment)  # fmt: skip
                del waiting[:passed]
            if _copied(segment, before, [*written, *held, *heard]) and not gives(segment):
                log.info("dropped a segment at %.1f s of a piece: it copies the text before "
                         "it, and its audio does not give it: %r",
                         segment.start, segment.text)  # fmt: skip
                continue
            heard.append(segment)
            bisect.insort(held, segment, key=_start)
            yield from settled()
        self._read_again(
            samples, waiting, sound, heard, unreadable, held, length, options, floor, within
        )
        yield from held

    def _read_again(
        self,
        samples: np.ndarray,
        stretches: list[tuple[int, int]],
        sound: tuple[tuple[int, int], ...],
        heard: list[Segment],
        unreadable: list[tuple[float, float]],
        held: list[Segment],
        length: float,
        options: TranscriptionOptions,
        floor: float,
        within: float,
        after: Segment | None = None,
    ) -> None:
        """Reads again what the text left out of `stretches`, into `held` (in time order). A
        held segment with a word stretched over the speech left out is read again with it, in
        place of it: its times spanned speech it skipped, so its text belongs after that
        speech's, or before, and only a reading of both can tell. Those of `stretches` that are
        in `sound` are not speech to `_made_up`: what the model wrote over them while doubting
        there was speech is dropped, as over any pause. `after`: the segment that went past the
        stretches, not yet held; what is read again does not write its first words again
        (`_without_words_around`).

        Segments read again with the speech they left out are read so at temperature 0 only.
        Where that reading fails Whisper's checks, or gives no text (it would write nothing in
        their place), they stay as they were read in their window (where they passed them), and
        the speech they left out is read alone, as any. Sampled
        at higher temperatures, such readings looped on whole windows: over talk 10 dB under a
        speaker (`benchmarks/long_audio.py --background 10`), 21 s read with a segment looped
        at temperatures 0-0.6 (224 tokens, 6-9 s a reading) before one at 0.8 passed. That
        recording: 36.2-36.8 s against 46.0-47.5 s (the raw engine 26.9 s), 109 word errors
        against 101-108 (the raw engine 113), the sample's words for the turn a lottery."""
        speech = tuple(stretch for stretch in stretches if stretch not in sound)
        short = dataclasses.replace(options, short_window=True)  # a stretch or two
        read_until = 0.0
        stayed: list[Segment] = []  # held segments that failed when read again with speech
        for start, end in _unheard(tuple(stretches), heard, length, unreadable):
            if end <= read_until:
                continue  # read with a segment it hid
            level = _level_around(samples, (start, end), stretches)
            loud = _too_faint(samples, (start, end), level, within, floor)
            if loud is not None:
                log.info("left %.1f-%.1f s of a piece unread: background or noise (%.1f s of "
                         "it at the level of the speech around it)", start, end, loud)  # fmt: skip
                continue
            hiding = [s for s in held if _hides(s, (start, end)) and s not in stayed]
            for segment in hiding:
                held.remove(segment)
            if hiding:
                start_with = min([max(start, read_until), *(s.start for s in hiding)])
                end_with = max([end, *(s.end for s in hiding)])
                log.info("re-reading %.1f-%.1f s of a piece: the text left that speech out "
                         "(%d segments with it)", start_with, end_with, len(hiding))  # fmt: skip
                # At temperature 0 only, unless the caller chose one: where it fails (or
                # gives no text), they stay.
                once = dataclasses.replace(short, temperature=0.0) if self.falls_back else short
                got, until = self._read_span(samples, start_with, end_with, level, once)
                failed = self.falls_back and any(_failed(segment) for segment in got)
                if failed or not _any_text(got):
                    why = "failed" if failed else "gave no text"
                    log.info("kept %d segments over %.1f-%.1f s: read again with the speech "
                             "they left out, they %s; that speech is read alone",
                             len(hiding), start_with, end_with, why)  # fmt: skip
                    for segment in hiding:
                        bisect.insort(held, segment, key=_start)
                    stayed.extend(hiding)
                    hiding = []
                else:
                    read_until = end_with
                    # Their words no longer tell what the text holds, the reading's do: what
                    # it left out of the speech after this is read again when that is judged
                    # (fast talkers built apart from the tests: a 13-word passage was lost).
                    heard[:] = [segment for segment in heard if segment not in hiding]
            said = [*heard, *held]  # what the text holds so far, for a reading that gives none
            if hiding:
                span = (start_with, end_with)
            else:
                start = max(start, read_until)
                read_until = end
                span = (start, end)
                log.info("re-reading %.1f-%.1f s of a piece: the text left that speech out "
                         "(0 segments with it)", start, end)  # fmt: skip
                got, until = self._read_alone(samples, start, end, level, short, said)
            unread: list[tuple[float, float]] | None = [] if self.falls_back else None
            read = list(_heard(iter(got), speech, until, unread))
            rest = self._read_rest(samples, span, read, speech, unread, level, short, floor, within,
                                   said)  # fmt: skip
            read = sorted([*read, *rest], key=_start)
            around = [s for s in (*heard, *held, *((after,) if after else ())) if s not in hiding]
            for segment in _without_words_around(read, around, self.transcriber.count_tokens):
                bisect.insort(held, segment, key=_start)
                if hiding:
                    heard.append(segment)

    def _read_rest(
        self,
        samples: np.ndarray,
        span: tuple[float, float],
        read: list[Segment],
        speech: tuple[tuple[int, int], ...],
        unread: list[tuple[float, float]] | None,
        level: float,
        options: TranscriptionOptions,
        floor: float,
        within: float,
        said: Sequence[Segment] = (),
    ) -> list[Segment]:
        """The segments of what `read` (a reading again of `span`, of speech alone or with the
        segments that hid it) left out of it, read once more, alone; nothing where `read` has
        no text (the span gave the model nothing). Read again, two turns 0.4 s apart (8 kHz
        mu-law, whisper-tiny.en, built apart from the tests) gave the second turn alone, and a
        30-word passage was lost; the first turn, read alone, gave its words. In a reverberant
        room, a recording's last segment read again with the speech its end hid stopped at
        "what you" as before, and "minimally have to modify" was lost."""
        if not _any_text(read):
            return []
        start, end = span
        whole = ((int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)),)
        rest: list[Segment] = []
        for a, b in _unheard(whole, read, samples.shape[0] / SAMPLE_RATE, unread or ()):
            if _too_faint(samples, (a, b), level, within, floor) is not None:
                continue
            log.info("re-reading %.1f-%.1f s of a piece: the reading again left it out", a, b)
            got, until = self._read_alone(samples, a, b, level, options, [*said, *read])
            rest += _heard(iter(got), speech, until, unread)
        return rest

    def _read_alone(
        self,
        samples: np.ndarray,
        start: float,
        end: float,
        level: float,
        options: TranscriptionOptions,
        said: Sequence[Segment],
    ) -> tuple[list[Segment], float]:
        """`_read_span`, and where it gives no text, read once more with the text said before
        `start` (the last `_SAID_BEFORE_SEGMENTS` of `said`) as the words before it, after the
        caller's prompt. Read alone, speech at the level of the speech around it can give no
        text at all: without the words before it, the model takes it for no speech. On a
        conference bridge (turns echoed 120-300 ms later, built apart from the tests), 9 s of
        the end of one turn and the next ("to him and painful to myself. The man pages now
        document how to create and manage external journals ...") were left out of their
        window; read again with the segment after them, only its words came back, and read
        alone once more, nothing: 26 words were lost (whisper-base). With the two segments
        before them as the words before, they were read."""
        got, until = self._read_span(samples, start, end, level, options)
        if _any_text(got):
            return got, until
        known = {id(segment): segment for segment in said}.values()  # heard and held share some
        before = [s for s in sorted(known, key=_start) if s.end <= start + _HEARD_SLACK]
        text = " ".join(s.text.strip() for s in before[-_SAID_BEFORE_SEGMENTS:]).strip()
        if not text:
            return got, until
        log.info("re-reading %.1f-%.1f s of a piece with the text before it: alone, the model "
                 "heard no speech there", start, end)  # fmt: skip
        prompted = dataclasses.replace(
            options, prompt=" ".join(t for t in (options.prompt, text) if t)
        )
        return self._read_span(samples, start, end, level, prompted)

    def _read_span(
        self,
        samples: np.ndarray,
        start: float,
        end: float,
        level: float,
        options: TranscriptionOptions,
    ) -> tuple[list[Segment], float]:
        """The segments of `samples` from `start` to `end` (seconds, and `_REREAD_PAD` either
        side) read alone, with what is more than `_BACKGROUND_DB` under `level` turned down,
        in the piece's time; and where the audio read ends."""
        begin = max(0, int((start - _REREAD_PAD) * SAMPLE_RATE))
        stop = min(samples.shape[0], int((end + _REREAD_PAD) * SAMPLE_RATE))
        again = turn_down_below(samples[begin:stop], level, _BACKGROUND_DB, _TURNED_DOWN_DB)
        result = self.transcriber.transcribe(again, options)
        segments = [_moved(segment, begin / SAMPLE_RATE) for segment in result.segments]
        return segments, stop / SAMPLE_RATE


def _without_words_around(
    read: list[Segment], around: list[Segment], count_tokens: Callable[[str], int]
) -> Iterator[Segment]:
    """The segments of speech read again (`read`, in order), less their first words where a
    segment `around` them ends with the same words in the same moment, and less their last where
    one begins so. The audio read again reaches `_REREAD_PAD` past the speech left out, and there
    the model hears again the end of a word the text around already holds: "He might even have
    been made" / "made Amyable himself.", and "I have" / "I have been unable to reap" (ten
    minutes of the speech set, and talk 18 dB under a speaker, whisper-base). A word said twice
    is said at two moments: only words whose times overlap are taken for one."""
    for index, segment in enumerate(read):
        words = segment.words or ()
        head = _said_before(words, around) if index == 0 else 0
        tail = _said_after(words[head:], around) if index == len(read) - 1 else 0
        if not head and not tail:
            yield segment
            continue
        kept = list(words[head : len(words) - tail])
        if not kept:
            log.info("dropped %r read again at %.1f s: the text around holds it",
                     segment.text, segment.start)  # fmt: skip
            continue
        groups = [g for g in (list(words[:head]), kept, list(words[len(words) - tail :])) if g]
        part = list(_parts(segment, groups, count_tokens))[1 if head else 0]
        yield dataclasses.replace(part, start=kept[0].start, end=kept[-1].end)


def _said_before(words: Sequence[Word], around: list[Segment]) -> int:
    """How many of `words` (from the first) end a segment of `around` whose last word ends
    after the first of them begins."""
    if not words:
        return 0
    return max(
        (_shared(s.words, words) for s in around
         if s.words and s.words[0].start < words[0].start < s.words[-1].end),
        default=0,
    )  # fmt: skip


def _said_after(words: Sequence[Word], around: list[Segment]) -> int:
    """How many of `words` (from the last) begin a segment of `around` whose first word begins
    before the last of them ends."""
    if not words:
        return 0
    return max(
        (_shared(words, s.words) for s in around
         if s.words and s.words[0].start < words[-1].end < s.words[-1].end),
        default=0,
    )  # fmt: skip


def _shared(before: Sequence[Word], after: Sequence[Word]) -> int:
    """The most words (up to `_OVERLAP_WORDS`) that end `before` and begin `after`, alike
    but for case and punctuation."""

    def said(word: Word) -> list[str]:
        return words_of(word.word.lower())

    for count in range(min(_OVERLAP_WORDS, len(before), len(after)), 0, -1):
        if [said(w) for w in before[-count:]] == [said(w) for w in after[:count]]:
            return count
    return 0


def _too_faint(
    samples: np.ndarray, span: tuple[float, float], level: float, within: float, floor: float
) -> float | None:
    """The seconds of `span` (of the piece's `samples`) at the level of the speech around it
    (within `within` dB of `level`, and over `floor`), where they are too few for it to be read
    again: under `_LOUD_SECONDS`, or half the span where that is less (a turn's first 0.6-1 s).
    None where it is loud enough."""
    start, end = span
    loud = seconds_at_level(samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)], level,
                            within, floor)  # fmt: skip
    return loud if loud < min(_LOUD_SECONDS, (end - start) / 2) else None


def _unheard(
    speech: tuple[tuple[int, int], ...],
    segments: list[Segment],
    length: float,
    unreadable: Sequence[tuple[float, float]] = (),
) -> list[tuple[float, float]]:
    """The spans of speech (seconds of the piece's audio) that no word (no segment, where the
    segments have no words) covers, nor any `unreadable` span, and that are at least
    `_UNHEARD_SECONDS` long (`_UNHEARD_TURN_SECONDS` at a stretch's start: the first words of
    a turn); neighbours less than a second apart are joined."""
    spans_heard = [
        part
        for s in segments
        if s.text.strip()
        for part in (
            [(s.start - _HEARD_SLACK, s.end + _HEARD_SLACK)]
            if s.words is None
            else [p for w in s.words for p in _said(w)]
        )
    ]
    heard = sorted(
        [*((max(0.0, start), min(length, end)) for start, end in spans_heard), *unreadable]
    )
    spans: list[tuple[float, float]] = []
    for a, b in speech:
        left = [(a / SAMPLE_RATE, b / SAMPLE_RATE)]
        for h0, h1 in heard:
            left = [part for x0, x1 in left for part in _minus((x0, x1), (h0, h1))]
        turn = a / SAMPLE_RATE  # where a turn's first words are
        spans += [
            (x0, x1)
            for x0, x1 in left
            if x1 - x0 >= (_UNHEARD_TURN_SECONDS if x0 == turn else _UNHEARD_SECONDS)
        ]
    joined: list[tuple[float, float]] = []
    for start, end in spans:
        if joined and start - joined[-1][1] < 1.0:
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    return joined


def _said(word: Word) -> list[tuple[float, float]]:
    """Where a word was said (seconds), give or take `_HEARD_SLACK`. Whisper's alignment
    stretches a word over speech the text skipped (`not` over 8.6 s, two clips of another
    speaker before it, in talk over music and voices built apart from the tests; `the` over
    2.2 s, where "shadow of death he is with us" went unwritten, in clips with noise between
    them): a word longer than `_LONGEST_WORD_SECONDS` is taken to cover only
    `_STRETCHED_WORD_END` at each end, without slack inside."""
    if word.end - word.start <= _LONGEST_WORD_SECONDS:
        return [(word.start - _HEARD_SLACK, word.end + _HEARD_SLACK)]
    return [
        (word.start - _HEARD_SLACK, word.start + _STRETCHED_WORD_END),
        (word.end - _STRETCHED_WORD_END, word.end + _HEARD_SLACK),
    ]


def _hides(segment: Segment, span: tuple[float, float]) -> bool:
    """Whether the segment's text jumped over `span` (seconds): one of its words is stretched
    over it, or it has words on both sides of it. The second: where one speaker's turn began
    before another's ended (turns overlapping, built apart from the tests), Whisper's text
    went on from the first turn's middle to the second, and its alignment put the second's
    first word ("Mr.") 2.7 s early, in the first turn; the first turn's end, read again on its
    own, came after the segment, out of order."""
    words = segment.words or ()
    stretched = any(
        word.start < span[1] and span[0] < word.end
        and word.end - word.start > _LONGEST_WORD_SECONDS
        for word in words
    )  # fmt: skip
    return stretched or (bool(words) and words[0].start < span[0] and span[1] < words[-1].end)


def _level_around(
    samples: np.ndarray, span: tuple[float, float], stretches: list[tuple[int, int]]
) -> float:
    """The level (dB) of the loudest stretch of speech (samples) that `span` (seconds)
    overlaps; the span's own where it overlaps none."""
    start, end = int(span[0] * SAMPLE_RATE), int(span[1] * SAMPLE_RATE)
    around = [speech_level_db(samples[a:b]) for a, b in stretches if a < end and start < b]
    return max(around, default=speech_level_db(samples[start:end]))


def _fills_the_pauses(samples: np.ndarray, speech: tuple[tuple[int, int], ...]) -> bool:
    """Whether what lies behind the speech (sample spans) of a piece's `samples` never falls
    far under it (`_DENSE_BED_DB`): a babble to turn down, not other speakers' quieter words."""
    loudest = max(speech_level_db(samples[start:end]) for start, end in speech)
    return loudest - floor_db(samples) <= _DENSE_BED_DB


def _start(segment: Segment) -> float:
    return segment.start


def _any_text(segments: Sequence[Segment]) -> bool:
    return any(segment.text.strip() for segment in segments)


def _minus(span: tuple[float, float], cut: tuple[float, float]) -> list[tuple[float, float]]:
    (a, b), (c, d) = span, cut
    if d <= a or c >= b:
        return [span]
    return [(x, y) for x, y in ((a, c), (d, b)) if y > x]


def _made_up(segment: Segment, speech: tuple[tuple[int, int], ...] | None) -> bool:
    """Whether Whisper wrote the segment without hearing it: it writes words over and over
    faster than anyone speaks (`_LOOP_WORDS` or more in a row, twice), or the model itself
    doubted the window held speech, and the segment lies over no speech VAD found (None: VAD
    was not asked), or it has several words said faster than anyone speaks."""
    words = words_of(segment.text.lower())
    seconds = segment.end - segment.start
    fast = len(words) >= _LOOP_WORDS and len(words) > FASTEST_WORDS_PER_SECOND * seconds
    if fast and repeated_in_a_row(words, _LOOP_WORDS):
        return True
    if segment.no_speech_prob < _NO_SPEECH:
        return False
    if fast:
        return True
    start, end = segment.start * SAMPLE_RATE, segment.end * SAMPLE_RATE
    return speech is not None and not any(a < end and start < b for a, b in speech)


def _captioned(segment: Segment) -> bool:
    """Whether the segment is Whisper's caption of a sound (`_CAPTIONS`), which it doubted
    was speech, not words said."""
    words = {word.lower() for word in words_of(segment.text)}
    return bool(words) and words <= _CAPTIONS and segment.no_speech_prob >= _CAPTION_NO_SPEECH


def _heard(
    segments: Iterator[Segment],
    speech: tuple[tuple[int, int], ...] | None,
    length: float,
    unreadable: list[tuple[float, float]] | None,
) -> Iterator[Segment]:
    """The segments (times in seconds of audio `length` long, in which VAD found `speech`;
    None: VAD was not asked) but those without words (" ... ...", "♪": a reading sampled
    over music once passed Whisper's checks with nothing else), those Whisper wrote without
    hearing them (`_made_up`) and those of a window it could not
    read: one whose reading failed Whisper's checks at every temperature and gave fewer than
    `_SPARSE_WORDS_PER_SECOND` words a second of its speech. The spans of such windows go into
    `unreadable`; None: the reading had no temperatures to fall back on (the caller chose one),
    and a reading that failed there is kept (what it left out is read again, as any text's).
    A segment of a failed window waits until the window is over (its seek).
    The words are counted against all the audio the window held, not only what its text took:
    in 26 s of a chord, Whisper's one segment ended at 3 s, and the next window began there."""
    window: list[Segment] = []
    spans = unreadable if unreadable is not None else []

    def judged() -> Iterator[Segment]:
        start = window[0].seek / 100  # the window Whisper read, not only what its text took
        end = min(length, start + WINDOW_SECONDS)
        words = sum(len(words_of(s.text)) for s in window)
        heard = _seconds_of(speech, start, end) if speech else end - start
        if words < _SPARSE_WORDS_PER_SECOND * heard:
            text = "".join(s.text for s in window)
            log.info("dropped %.1f-%.1f s of a piece: its reading failed at every temperature "
                     "(%d words): %r", start, end, words, text)  # fmt: skip
            spans.append((start, end))
        else:
            yield from window
        window.clear()

    for segment in segments:
        if _made_up(segment, speech) or _captioned(segment) or not words_of(segment.text):
            continue
        if window and segment.seek != window[0].seek:
            yield from judged()
        if _failed(segment) and unreadable is not None:
            window.append(segment)
        else:
            yield segment
    if window:
        yield from judged()


def _failed(segment: Segment) -> bool:
    """Whether the reading of the segment's window failed Whisper's checks (at the temperature
    it was read at): too improbable for speech, or compressing too well."""
    improbable = segment.avg_logprob < _FAILED_LOGPROB and segment.no_speech_prob <= _NO_SPEECH
    return improbable or segment.compression_ratio > _FAILED_COMPRESSION


def _seconds_of(speech: tuple[tuple[int, int], ...], start: float, end: float) -> float:
    """Seconds of `speech` (samples) between `start` and `end` (seconds)."""
    a, b = start * SAMPLE_RATE, end * SAMPLE_RATE
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in speech) / SAMPLE_RATE


def _moved(segment: Segment, offset: float) -> Segment:
    words = segment.words
    if words is not None:
        words = tuple(
            dataclasses.replace(w, start=w.start + offset, end=w.end + offset) for w in words
        )
    return dataclasses.replace(
        segment,
        start=segment.start + offset,
        end=segment.end + offset,
        seek=segment.seek + round(offset * 100),
        words=words,
    )


def _in_order(
    reader: _PieceReader,
    first: Piece,
    first_segments: Iterator[Segment],
    pieces: Iterator[Piece],
    should_stop: Callable[[], bool],
    parallel: int,
    behind: _VoicesBehind | None = None,
) -> Iterator[Segment]:
    """The first piece's segments, then every later piece's in order, `parallel` pieces read
    at once on threads of their own (which stop with the job: they share its cancel scope).
    The piece at the head of the line is streamed as it is read; the others wait their turn.
    A piece that follows on from the one before it (`_follows_on`) is read with the text of
    its lead-in, side by side with the others; so is every piece once `behind` has heard
    voices behind the speaker in the pieces planned so far, which reach as far ahead as the
    pieces read at once."""
    cancelled = current_cancel_event()
    siblings = SiblingGroup(None if reader.options.prompt else _SIBLING_PREVIOUS_TOKENS)
    pool: ThreadPoolExecutor | None = None
    pending: collections.deque[Iterator[Segment]] = collections.deque()
    ahead: collections.deque[Piece] = collections.deque()
    previous = first

    def read(piece: Piece, out: queue.SimpleQueue[object], follows_on: bool, lead_in: bool) -> None:
        scope = cancel_scope(cancelled) if cancelled is not None else contextlib.nullcontext()
        try:
            with scope, siblings.member():
                for segment in reader.read(piece, follows_on, lead_in):
                    out.put(segment)
            out.put(_END)
        except BaseException as exc:
            out.put(exc)

    def received(out: queue.SimpleQueue[object]) -> Iterator[Segment]:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def fill() -> None:
        """Start reading the next pieces, up to `parallel` of them (one: read when asked)."""
        nonlocal pool, previous
        while len(pending) < parallel and not should_stop():
            # The pieces to be read at once are planned before any of them is read, so that
            # voices behind heard in any of them give each its lead-in.
            while len(ahead) < parallel and (planned := next(pieces, None)) is not None:
                ahead.append(planned)
            if not ahead:
                return
            piece = ahead.popleft()
            follows_on = _follows_on(piece, previous)
            previous = piece
            lead_in = behind is not None and behind.heard
            if parallel == 1:
                pending.append(_deferred(reader, piece, follows_on, lead_in))
                continue
            if pool is None:
                pool = ThreadPoolExecutor(parallel, thread_name_prefix="harken-piece")
            out: queue.SimpleQueue[object] = queue.SimpleQueue()
            pool.submit(read, piece, out, follows_on, lead_in)
            pending.append(received(out))

    try:
        # Before the others start: the first text is not held back.
        yield from first_segments
        fill()
        while pending:
            if should_stop():
                log.info("transcription stopped: the job was cancelled")
                return
            segments = pending.popleft()
            fill()
            yield from segments
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


_END = object()  # a piece's reading is over


class _VoicesBehind:
    """Whether voices behind the speaker have been heard in a recording: some piece of its plan
    follows on from the one before it (`_follows_on`). Where they are, every piece is read with
    the text of its lead-in, not only those that follow on: over talk 18 dB under (the
    benchmark's `--background 18`, four builds, whisper-base) 175 -> 143 word errors (the raw
    engine 153) at 1.07x the time; where every piece follows on already (talk 10 dB under, four
    crowds built apart) the same text. In a recording without voices behind, the text of
    another speaker's turn, read alone, is a poor prompt for the next one (the turns 48 -> 65,
    the telephone file 107 -> 123): there no piece has a lead-in."""

    def __init__(self) -> None:
        self.heard = False

    def watch(self, pieces: Iterator[Piece], previous: Piece) -> Iterator[Piece]:
        """`pieces`, the plan after `previous`, noting as each is planned whether it follows
        on from the one before."""
        for piece in pieces:
            self.heard = self.heard or _follows_on(piece, previous)
            previous = piece
            yield piece


def _follows_on(piece: Piece, previous: Piece) -> bool:
    """Whether VAD heard speech through nearly all of `piece` and the pause before it: the
    speaker's words go on over a sound that never stops (voices behind), and the piece was
    cut from the one before for length, not at a pause."""
    heard = sum(end - start for start, end in piece.speech)
    return heard >= _FOLLOWS_ON_SHARE * (piece.end - previous.end)


def _joined_where_they_follow_on(pieces: Iterator[Piece]) -> Iterator[Piece]:
    """The pieces, each run of them that follow on from one another (`_follows_on`) joined
    into as few pieces spanning up to `_JOINED_SECONDS` as it takes, read as the raw engine
    reads a file: window after window, each with the text before it. The joins are placed so
    that the longest of them is as short as it can be, as they are read side by side: voices
    13 dB behind, 3.6 min (`benchmarks/long_audio.py --background 13`), pieces of 38, 40, 31
    and 50 s were joined first come first as 109 s and 50 s, the 109 s piece read alone long
    after the other was done; as 79 s and 81 s, the recording took 52.2 and 54.2 s against
    56.1 and 59.8 s (whisper-base, in one process), 61 word errors against 63."""
    run: list[Piece] = []
    for piece in pieces:
        if run and not (_follows_on(piece, run[-1]) and piece.end - run[0].start <= _RUN_SAMPLES):
            yield from _balanced(run)
            run = []
        run.append(piece)
    yield from _balanced(run)


def _balanced(run: list[Piece]) -> Iterator[Piece]:
    """`run`, pieces that each follow on from the one before, joined into as few as spans of up
    to `_JOINED_SAMPLES` allow, the longest as short as it can be (where several ways give
    it, the earlier pieces are the longer)."""
    if not run:
        return

    def grouped(longest: int) -> list[list[Piece]]:
        groups: list[list[Piece]] = []
        for piece in run:
            if groups and piece.end - groups[-1][0].start <= longest:
                groups[-1].append(piece)
            else:
                groups.append([piece])
        return groups

    fewest = len(grouped(_JOINED_SAMPLES))
    spans = sorted({b.end - a.start for i, a in enumerate(run) for b in run[i:]})
    longest = next(span for span in spans if len(grouped(span)) <= fewest)
    for group in grouped(longest):
        yield functools.reduce(Piece.joined, group)


def _deferred(
    reader: _PieceReader, piece: Piece, follows_on: bool, lead_in: bool
) -> Iterator[Segment]:
    """A piece read on this thread once its turn comes."""
    yield from reader.read(piece, follows_on, lead_in)


def _numbered(segments: Iterator[Segment]) -> Iterator[Segment]:
    for index, segment in enumerate(segments):
        yield dataclasses.replace(segment, id=index)


def _without_loops(
    segments: Iterator[Segment], said: Callable[[Segment], bool] = lambda _: False
) -> Iterator[Segment]:
    """Drops a segment of `_LOOP_WORDS` words or more whose words all stand, in order, in one
    of the two segments before it while their times overlap or touch: Whisper decoding in a
    loop (a passage said once, written twice). A passage said twice at separate times is kept;
    so is one said again right after itself, less than a second apart, where `said` (the
    segment's own audio read alone) finds it: a clip of five words, repeated 0.6 s after
    itself in a recording built apart from the tests, was dropped as a loop."""
    recent: collections.deque[tuple[str, float]] = collections.deque(maxlen=2)
    for segment in segments:
        words = " ".join(words_of(segment.text.lower()))
        repeats = [
            end
            for before, end in recent
            if f" {words} " in f" {before} " and segment.start <= end + _TOUCHING_SECONDS
        ]
        # Times that overlap cannot hold the passage twice; others are asked.
        looped = len(words.split()) >= _LOOP_WORDS and bool(repeats)
        if looped and (segment.start < max(repeats) or not said(segment)):
            log.info("dropped a repeated segment at %.1f s: %r", segment.start, segment.text)
            continue
        recent.append((words, segment.end))
        yield segment


def _copied(segment: Segment, before: str | None, earlier: Sequence[Segment]) -> bool:
    """Whether all the words of `segment`, `_LOOP_WORDS` or more, stand in order in the text
    said before it: `before` (the words before the piece) and the segments of `earlier` that
    end more than `_TOUCHING_SECONDS` before it begins (a repeat that touches the passage it
    repeats is `_without_loops`'s to judge). Whisper can write a passage where it was not
    said: reading short replies between turns (whisper-tiny.en, built apart from the tests),
    a window skipped a passage and wrote it 20 s late, over "of data stored on disk or
    forwarded by the log level"; the passage, read again where it was said, came out twice,
    and those words were lost. Whether the segment's own audio gives it is for the caller to
    ask (`_said_alone`)."""
    words = " ".join(words_of(segment.text.lower()))
    if len(words.split()) < _LOOP_WORDS:
        return False
    known = {id(s): s for s in earlier if s.end + _TOUCHING_SECONDS < segment.start}.values()
    texts = [before or "", *(s.text for s in sorted(known, key=_start))]
    text = " ".join(words_of(" ".join(texts).lower()))
    return f" {words} " in f" {text} "


def _said_alone(
    transcriber: Transcriber,
    audio: np.ndarray,
    options: TranscriptionOptions,
    script: ChineseScript | None = None,
) -> Callable[[Segment], bool]:
    """Whether most of a segment's words (`_SAID_SHARE`, in order) are in what the model reads
    in its own span of `audio` (padded by `_REREAD_PAD`), read alone; in Chinese `script`, if
    given, as the segment is. Each character of Chinese counts as a word (`words_of`).

    Read at temperature 0 (or the caller's): whether the words are in the audio is the model's
    best reading's to tell, not a random sample's. On the fallback schedule, over talk 10 dB
    under a speaker (voices built apart from the tests), two segments written in a loop over
    other speech were each read at all six temperatures (2.7 and 3.5 s), none of them passing,
    and both were dropped as loops all the same."""
    temperature = 0.0 if options.temperature is None else options.temperature

    def said(segment: Segment) -> bool:
        begin = max(0, int((segment.start - _REREAD_PAD) * SAMPLE_RATE))
        end = min(audio.shape[0], int((segment.end + _REREAD_PAD) * SAMPLE_RATE))
        alone = dataclasses.replace(
            options, prompt=None, word_timestamps=False, temperature=temperature
        )
        result = transcriber.transcribe(as_float32(audio[begin:end]), alone)
        read = "".join(s.text for s in result.segments)
        if script is not None:
            read = convert_text(read, script)
        words = words_of(segment.text.lower())
        found = difflib.SequenceMatcher(None, words, words_of(read.lower()), autojunk=False)
        matched = sum(block.size for block in found.get_matching_blocks())
        return bool(words) and matched >= _SAID_SHARE * len(words)

    return said


def _shifted(segment: Segment, piece: Piece, new_id: int) -> Segment:
    clock = _PieceClock(piece)
    pauses = _pauses(piece)

    def span(start: float, end: float, word: bool) -> tuple[float, float]:
        if word:
            start, end = clock.word(start, end)
        else:
            start, end = clock.start(start), clock.end(end)
        start, end = _out_of_pauses(start, end, pauses)
        # A time of no length exactly at a join maps to where speech resumes as a start and
        # to where it stopped as an end: it stays where it stopped.
        return round(min(start, end), 3), round(end, 3)

    start, end = span(segment.start, segment.end, word=False)
    words = segment.words
    if words is not None:
        # A segment's words stay inside it, as the raw engine times a segment by its words:
        # where its end moved back out of a pause, a word Whisper put wholly in the pause ends
        # with it (else the segment would be split at the cut after that pause, its last part
        # ending before it starts).
        inside = []
        for word in words:
            word_start, word_end = span(word.start, word.end, word=True)
            word_start = min(max(word_start, start), end)
            word_end = min(max(word_end, word_start), end)
            inside.append(dataclasses.replace(word, start=word_start, end=word_end))
        words = tuple(inside)
    return dataclasses.replace(
        segment,
        id=new_id,
        seek=round(clock.start(segment.seek / 100) * 100),
        start=start,
        end=end,
        words=words,
    )


def _split_at_cuts(
    segment: Segment, piece: Piece, count_tokens: Callable[[str], int]
) -> Iterator[Segment]:
    """The segment, split where the piece left most of a long pause out between two of its
    words. Whisper mostly ends a segment there by itself, but not always (tiny.en wrote a few
    cards read 5-25 s apart as one segment of 65 s), and a subtitle then stays up through the
    silence. Each part keeps its own words, their text and their tokens."""
    words = segment.words
    if not words or len(piece.read) == 1:
        yield segment
        return
    cuts = [(end / SAMPLE_RATE, start / SAMPLE_RATE)
            for (_, end), (start, _) in itertools.pairwise(piece.read)]  # fmt: skip
    groups: list[list[Word]] = [[words[0]]]
    for before, word in itertools.pairwise(words):
        if any(before.end <= cut_start and word.start >= cut_end for cut_start, cut_end in cuts):
            groups.append([])
        groups[-1].append(word)
    if len(groups) == 1:
        yield segment
        return
    yield from _parts(segment, groups, count_tokens)


def _parts(
    segment: Segment, groups: list[list[Word]], count_tokens: Callable[[str], int]
) -> Iterator[Segment]:
    """The segment cut into parts of its words (`groups`, in order, none empty), each with
    its own text and tokens."""
    texts = ["".join(w.word for w in group) for group in groups]
    counts = [count_tokens(text) for text in texts]
    # Whisper's tokens are the text's between a start and an end timestamp: what is not text
    # goes half to the first part, half to the last.
    extra = max(0, len(segment.tokens) - sum(counts))
    counts[0] += extra // 2
    counts[-1] = len(segment.tokens)  # the rest
    tokens = segment.tokens
    for index, (group, text) in enumerate(zip(groups, texts, strict=True)):
        yield dataclasses.replace(
            segment,
            start=segment.start if index == 0 else group[0].start,
            end=segment.end if index == len(groups) - 1 else group[-1].end,
            text=text,
            tokens=tokens[: counts[index]],
            words=tuple(group),
        )
        tokens = tokens[counts[index] :]


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
    """The pauses between the stretches of speech (and of sound read as speech) inside a piece,
    in seconds of the recording (whether read or left out)."""
    heard = sorted((*piece.speech, *piece.sound))
    return [
        (end / SAMPLE_RATE, start / SAMPLE_RATE)
        for (_, end), (start, _) in itertools.pairwise(heard)
        if end < start
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
