"""faster-whisper (CTranslate2) behind the Transcriber interface."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harken.engine.batching import BatchingWhisper
from harken.engine.batching import install as install_batching
from harken.engine.runtime import prepare_ctranslate2
from harken.engine.script import FASTEST_WORDS_PER_SECOND, repeated_in_a_row, words_of
from harken.engine.segmentation import as_float32
from harken.engine.types import (
    Segment,
    Transcription,
    TranscriptionInfo,
    TranscriptionOptions,
    Word,
)

log = logging.getLogger(__name__)

# Whisper's own fallback: retry a window at higher temperature when decoding degenerates.
_TEMPERATURE_FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# A draft (live partial text) is encoded with this much silence after its audio instead of a
# whole 30-second window: the encoder is most of a short clip's cost (whisper-base, 2 cores: 0.54 s
# for 30 s, 0.09 s for 10 s). Measured on prefixes of 14 clips (0.6 s on, every 0.5 s, 141
# decodes, beam 5): whisper-base 0.43 s a decode against 0.86 s, the text the full window's
# (but for its last two words) in 121 of 141 (4 s of padding: 114, and Whisper looped more
# often; 12 s: 123); tiny.en 0.25 s against 0.46 s, 109 of 141.
_DRAFT_PADDING_SECONDS = 8.0
# A draft stops after this many tokens a second of its audio (plus as many): Whisper reading
# 0.6 s of a word can loop ("I'm sorry" fifty times, 200 tokens at 19 ms each).
_DRAFT_TOKENS_PER_SECOND = 10
# A short window's first reading (`TranscriptionOptions.short_window`) that runs to this many
# tokens a second of its audio (plus as many) is a loop, and is read again on the whole window,
# where each reading stops there too (`_decode_window_or_repeats`).
# The clips of ../shared (English, Chinese, Japanese, ...) came to at most 5 (timestamps aside).
_SHORT_TOKENS_PER_SECOND = 20
# A last window shorter than this is read once, without fallbacks (`_decode_tail`).
_TAIL_SECONDS = 1.0
_FRAMES_PER_SECOND = 100  # Whisper's mel frames
_TIMESTAMP_SECONDS = 0.02  # one step of Whisper's timestamp tokens
# A sentence said again in a window, this many words or more, need not be a decoding loop
# (`_said_again`), unless its words come faster than anyone speaks.
_REPEAT_WORDS = 4
# ...nor where the reading compresses more than this many times Whisper's own threshold: one
# sentence written ten times over, a loop. Readings kept as sentences said again (three sayings
# of a sentence in a window, English clips said twice in a row, Japanese) compressed 2.4-3.4
# times; loops that were kept on recordings with a crowd talking behind the speaker, 6.4-14.8
# ("and I'm trying to reach out to you," twenty times a window, three windows in a row, each
# prompted with the one before, over a speaker saying other things: WER 60.6%, the raw engine
# 34.0%; with the loops read again at higher temperatures, 37.9%).
_SAID_AGAIN_MOST = 2.0
# A window whose reading ends in a lone timestamp (Whisper's "no speech follows in this window")
# at least `_READ_ON_AFTER` seconds in, where the caller heard at least `_READ_ON_SPEECH` seconds
# of speech after it (`TranscriptionOptions.speech`), is read on from that timestamp rather than
# skipped to its end (`_read_on`).
_READ_ON_AFTER = 5.0
_READ_ON_SPEECH = 5.0
# What faster-whisper's per-window decoding returns for a window it should skip as silent.
_NO_SPEECH = types.SimpleNamespace(no_speech_prob=1.0, sequences_ids=[[]])


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    prepare_ctranslate2()
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def pick_compute_type(device: str, compute_type: str) -> str:
    """float32 on CPU: measured faster than int8 on AVX2 CPUs without VNNI (README, Defaults)."""
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "float32"


class FasterWhisperTranscriber:
    def __init__(
        self,
        name: str,
        weights: Path | str,
        *,
        device: str = "auto",
        compute_type: str = "default",
        cpu_threads: int = 0,
        beam_size: int = 5,
        max_concurrency: int = 1,
        threads_per_worker: int = 0,
        batch_size: int = 1,
        download_root: Path | None = None,
    ) -> None:
        prepare_ctranslate2()
        from faster_whisper import WhisperModel

        self.name = name
        self.device = pick_device(device)
        self.compute_type = pick_compute_type(self.device, compute_type)
        self.beam_size = beam_size
        self.max_concurrency = max(1, max_concurrency)
        # Every worker may use every core by default, so that a lone request runs at full
        # speed; workers of one core each do more under load of short requests (README, "Why
        # these defaults").
        threads = threads_per_worker or cpu_threads or os.cpu_count() or 1
        self._model = WhisperModel(
            str(weights),
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=threads,
            num_workers=self.max_concurrency,
            download_root=str(download_root) if download_root else None,
            local_files_only=isinstance(weights, Path),
        )
        # Windows of concurrent requests share model calls (engine/batching.py). CPU only:
        # the batcher moves encoder outputs through host memory.
        self.batcher: BatchingWhisper | None = None
        self.parallel_windows = 1
        if batch_size > 1 and self.device == "cpu":
            self.batcher = install_batching(
                self._model, max_batch=batch_size, executors=self.max_concurrency
            )
            # A long recording reads this many pieces at once, their beam searches run as one
            # batch (engine/batching.py: siblings).
            self.parallel_windows = batch_size
        # Reading an unknown language costs faster-whisper a second encoder pass over the first
        # window (once to detect, once to transcribe); the encoding is reused instead.
        self._encodings = _ReuseLastEncoding(self._model.encode)
        self._model.encode = self._encodings  # type: ignore[method-assign]
        self._decode_window = self._model.generate_with_fallback
        self._model.generate_with_fallback = self._decode  # type: ignore[method-assign]
        self._split_window = self._model._split_segments_by_timestamps
        self._model._split_segments_by_timestamps = self._read_on  # type: ignore[method-assign]
        self._heard = threading.local()  # the speech of the audio this thread reads
        self.multilingual: bool = bool(self._model.model.is_multilingual)
        self._tokenizer = self._model.hf_tokenizer
        log.info(
            "loaded %s on %s (%s, %d threads, %d workers, batches of %d)",
            name, self.device, self.compute_type, threads, self.max_concurrency, batch_size,
        )  # fmt: skip

    def supported_languages(self) -> frozenset[str]:
        return frozenset(self._model.supported_languages)

    def warm_up(self) -> None:
        """Read a second of silence on every worker at once, so that the first request does
        not pay the runtime's first-call costs (its buffers, threads and kernels). Measured on
        a 2.4 s clip (whisper-base, 2 cores, 3 fresh processes each): the first call took
        0.71-0.84 s, every later one, and the first after this, 0.64-0.69 s. Costs about one
        30 s window per worker; the server calls it while loading, a one-off command need not."""
        silence = np.zeros(self._model.feature_extractor.sampling_rate, dtype=np.float32)
        options = TranscriptionOptions(language="en", temperature=0.0)
        failed: list[BaseException] = []

        def read() -> None:
            try:
                for _ in self.transcribe(silence, options).segments:
                    pass
            except BaseException as exc:  # re-raised on the caller's thread
                failed.append(exc)

        workers = [threading.Thread(target=read) for _ in range(self.max_concurrency)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failed:
            raise failed[0]

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcription:
        audio = as_float32(audio)
        extractor = self._model.feature_extractor
        # The encoder reads the audio and a little padding, not a 30-second window (the padding
        # is what a full window would have there): a draft, or short audio read for a quick
        # first text. Decoded here, in one go, as the shorter encoding lasts only while this
        # thread reads it. Longer audio read so has its last window cut (`cutting_short`):
        # the encoder's pass is 40-45% of a long recording's time (whisper-base, 2 cores: 1.4 s
        # for 30 s of audio, 0.4 s for 12 s).
        seconds = len(audio) / extractor.sampling_rate
        frames_per_second = extractor.sampling_rate // extractor.hop_length
        frames = int(np.ceil(seconds + _DRAFT_PADDING_SECONDS)) * frames_per_second
        known = options.language is not None or not self.multilingual  # nothing to detect
        if options.draft and len(audio) <= extractor.n_samples:
            tokens = int(_DRAFT_TOKENS_PER_SECOND * (seconds + 1))
            cut = self._encodings.cut_to(min(frames, extractor.nb_max_frames))
        elif options.short_window and known and frames < extractor.nb_max_frames:
            tokens, cut = None, self._encodings.cut_to(frames, whole_if_failed=True)
        elif options.short_window and known:
            result = self._transcribe(audio, options)
            last_cut = self._stepped(result.segments, options.speech, cut_short=True)
            return Transcription(info=result.info, segments=last_cut)
        else:
            result = self._transcribe(audio, options)
            stepped = self._stepped(result.segments, options.speech)
            return Transcription(info=result.info, segments=stepped)
        with cut, self._hearing(options.speech):
            result = self._transcribe(audio, options, max_new_tokens=tokens)
            segments = tuple(result.segments)
        return Transcription(info=result.info, segments=iter(segments))

    def _transcribe(
        self, audio: np.ndarray, options: TranscriptionOptions, max_new_tokens: int | None = None
    ) -> Transcription:
        temperature = _TEMPERATURE_FALLBACK if options.temperature is None else options.temperature
        self._encodings.forget()
        language, probability = options.language, None
        one_window = len(audio) <= self._model.feature_extractor.n_samples  # 30 s
        if language is None and self.multilingual and one_window:
            language, probability = self.detect_language(audio)
        segments, info = self._model.transcribe(
            audio,
            language=language,
            task=options.task,
            beam_size=options.beam_size or self.beam_size,
            temperature=temperature,
            initial_prompt=options.prompt or None,
            hotwords=options.hotwords or None,
            word_timestamps=options.word_timestamps,
            vad_filter=False,
            condition_on_previous_text=True,
            max_new_tokens=max_new_tokens,
        )
        return Transcription(
            info=TranscriptionInfo(
                language=info.language,
                language_probability=float(
                    info.language_probability if probability is None else probability
                ),
                duration=float(info.duration),
            ),
            segments=_convert(segments, on_end=self._encodings.forget),
        )

    def _stepped(
        self,
        segments: Iterator[Segment],
        speech: tuple[tuple[float, float], ...],
        cut_short: bool = False,
    ) -> Iterator[Segment]:
        """`segments`, each step of their decoding taken with `speech` heard
        (`TranscriptionOptions.speech`) and, if `cut_short`, a last window holding less than a
        whole one's audio cut short (`_ReuseLastEncoding.cutting_short`)."""
        if not speech and not cut_short:
            return segments

        @contextlib.contextmanager
        def within() -> Iterator[None]:
            with self._hearing(speech), self._encodings.cutting_short(cut_short):
                yield

        return _each_step_within(segments, within)

    def _hearing(
        self, speech: tuple[tuple[float, float], ...]
    ) -> contextlib.AbstractContextManager[None]:
        """Inside the block, windows this thread reads know where `speech` is (`_read_on`)."""
        return _set_for_thread(self._heard, "speech", speech)

    def _read_on(
        self,
        tokenizer: Any,
        tokens: list[int],
        time_offset: float,
        segment_size: int,
        segment_duration: float,
        seek: int,
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """faster-whisper's split of a window's tokens into segments, and where the next window
        starts; but a window whose reading ends early in a lone timestamp, where the caller
        heard speech after it (`TranscriptionOptions.speech`), is read on from that timestamp.

        A lone timestamp at the end of a window's text is Whisper's way of saying that no
        speech follows in the window, and faster-whisper goes on at the window's end. Where
        voices behind a speaker fill the pauses, Whisper says so of speech too: in a joined
        piece of 109 s, 13 dB over voices behind (`benchmarks/long_audio.py --background 13`,
        whisper-base), a window's text ended 10-11 s in, and its other 19-20 s went unread
        until the long-form reader read 16.7 s of it again, alone and out of turn. Read on from
        the timestamp, with the text before it, the same recording gave 63 word errors, not 69,
        in less time. Only where 5 s or more of speech follow: at 1 s it also read on over VAD's
        padding after a speaker's last word, and once wrote that word again."""
        segments, next_seek, lone = self._split_window(
            tokenizer, tokens, time_offset, segment_size, segment_duration, seek
        )
        speech = getattr(self._heard, "speech", ())
        if not (lone and segments and speech):
            return segments, next_seek, lone
        ended = float(segments[-1]["end"])
        window_end = time_offset + segment_duration
        after = sum(max(0.0, min(end, window_end) - max(start, ended)) for start, end in speech)
        read = ended - time_offset
        if read >= _READ_ON_AFTER and after >= _READ_ON_SPEECH:
            log.debug("reading on from %.1f s: the window's text ended %.1f s into it, with "
                      "%.1f s of speech after", ended, read, after)  # fmt: skip
            next_seek = seek + round(read * _FRAMES_PER_SECOND)
        return segments, next_seek, lone

    def _decode(self, encoder_output: Any, prompt: list[int], tokenizer: Any, options: Any) -> Any:
        """faster-whisper's decoding of one window (`generate_with_fallback`), but for a
        window cut short (`_decode_short_window`), a short last window (`_decode_tail`) and a
        window that says a sentence again (`_decode_window_or_repeats`)."""
        if self._encodings.whole_if_failed():
            decoded = self._decode_short_window(encoder_output, prompt, tokenizer, options)
            if decoded is not None:
                return decoded
            log.debug("a short window's reading failed: read on the whole window")
            # Word timestamps are still aligned on the short encoding: it holds all the audio.
            # The whole window holds no more of it: a reading past the short one's bound loops,
            # and fails where there are other temperatures to read at.
            encoder_output = self._encodings.whole()
            if _falls_back(options):
                cap = self._loop_tokens(prompt)
                options = dataclasses.replace(options, max_new_tokens=cap)
                return self._decode_window_or_repeats(
                    encoder_output, prompt, tokenizer, options, cap
                )
        if self._encodings.is_tail():
            return self._decode_tail(encoder_output, prompt, tokenizer, options)
        return self._decode_window_or_repeats(encoder_output, prompt, tokenizer, options)

    def _loop_tokens(self, prompt: list[int]) -> int:
        """The most tokens a reading of a window cut short may take: more is a loop
        (`_SHORT_TOKENS_PER_SECOND`)."""
        tokens = int(_SHORT_TOKENS_PER_SECOND * (self._encodings.seconds() + 1))
        return min(tokens, self._model.max_length - len(prompt))

    def _decode_short_window(
        self, encoder_output: Any, prompt: list[int], tokenizer: Any, options: Any
    ) -> Any | None:
        """The first reading of a window cut short (`TranscriptionOptions.short_window`) if it
        passes Whisper's checks, else None: it is no use sampling at higher temperatures on a
        window the model was not trained on (whisper-tiny.en read "five, five" in 2 s of audio
        as a loop at every temperature); the window is read whole instead, as any other. A
        loop is cut short (`_SHORT_TOKENS_PER_SECOND`): it fails all the same. Where it
        fails after the window's previous text, it is read once more without it first, as a
        whole window is (`_decode_window_or_repeats`): read whole, the loop ran to its end."""
        tokens = self._loop_tokens(prompt)
        once = dataclasses.replace(
            options, temperatures=list(options.temperatures)[:1], max_new_tokens=tokens
        )
        first = self._decode_window(encoder_output, prompt, tokenizer, once)
        ended = len(first[0].sequences_ids[0]) < tokens
        if ended and (_passes(first, options) or _said_again(first, tokenizer, options)):
            return first
        alone = _without_previous_text(prompt, tokenizer, options) if _falls_back(options) else None
        if alone is not None:
            again = self._decode_window(encoder_output, alone, tokenizer, once)
            if len(again[0].sequences_ids[0]) < tokens and _passes(again, options):
                log.debug("a short window that failed after its previous text read without it")
                return again
        return None

    def _decode_tail(
        self, encoder_output: Any, prompt: list[int], tokenizer: Any, options: Any
    ) -> Any:
        """A short last window, read once.

        Within long audio Whisper often ends a window's text a little before the audio ends
        (its last segment closed, a breath or a pause left), and faster-whisper reads what is
        left as a window of its own: under a second of audio, without the speech around it. Its
        text then often fails the fallback checks, and each fallback samples up to hundreds of
        tokens of invented text. A window after the first with less than `_TAIL_SECONDS` of
        audio is therefore read once, at temperature 0: a word that reads cleanly there is kept,
        and a read that would need a fallback counts as a window without speech. On a German
        reading cut into pieces (3.8 min, whisper-base) one such tail took five fallbacks,
        10 s, and wrote "Ich wünsche euch einen schönen Abend."; WER 19.8-24.6% against the raw
        engine's 15.3%, and 16.4% with this. No English test recording changed.
        """
        once = dataclasses.replace(options, temperatures=[0.0])
        result, logprob, temperature, ratio = self._decode_window(
            encoder_output, prompt, tokenizer, once
        )
        if not _passes((result, logprob, temperature, ratio), options):
            log.debug("a %.1f s tail window read as no speech", self._encodings.seconds())
            return _NO_SPEECH, -math.inf, 0.0, 0.0
        return result, logprob, temperature, ratio

    def _decode_window_or_repeats(
        self,
        encoder_output: Any,
        prompt: list[int],
        tokenizer: Any,
        options: Any,
        cap: int | None = None,
    ) -> Any:
        """faster-whisper's decoding of one window, but where its first reading fails only
        for compressing too well and does so for sentences said again (`_said_again`), or
        fails after a previous text without which it passes (`_without_previous_text`).

        Whisper takes text that compresses more than 2.4 times for a decoding loop, and reads
        the window again, sampling at higher temperatures. A speaker who says a sentence
        twice or three times in a window writes such text too, and its first reading, right,
        was replaced by a random sample: every English clip said twice in a row (5.5 min,
        Opus, whisper-base), 8 of 63 windows sampled again, 19-37 word errors of 817 from run
        to run in 76-79 s; with the first reading kept, 34 in every run, in 37-38 s (the raw
        engine 45-89).

        A first reading that fails after the window's previous text (Whisper's own, not a
        caller's prompt) is read once more at temperature 0 without it, before any sampling:
        that text can start the loop. A 38 s piece of a recording built apart from the tests
        (clips over chords 15 dB under) read its second window, after "8 of Spades, 4 of
        Clothes, 7 of Hearts", as "18, 18, 18, ..." at every temperature: six readings, 23 s
        of a 2.6-minute recording that took 37-45 s in all (the raw engine 22 s), and a random
        sample kept in place of "Stuff it into you, his belly counselled him."; read without
        it, the sentence at temperature 0, the recording in 22-24 s, and 16 s (the raw engine
        17-18 s, the same 10 word errors) with the window's short reading read so too, so
        that the whole window, where the loop ran to its end, is not read. On 29 other
        recordings (the benchmark's builds; held out, music beds, talk and noise behind,
        reverberation, AAC, faint speech; 2.6-8 min) the word errors and times were the same.

        A sampled reading that writes words twice in a row in a segment (`_loops`) fails,
        however little its whole text compresses: at a higher temperature the model guesses,
        and over music such a guess can pass the checks.

        Where a window cut short failed and its few seconds are read on the whole window
        (`_decode_short_window`), each reading stops at the short one's bound, `cap`. Whisper
        looped there at every temperature, up to 224 tokens (5-7 s) a reading, on speech read
        again over talk 10 dB under a speaker. A reading that runs to the bound is a loop, and
        so is one that writes words twice in a row (so bounded, the beam search can end on a
        shorter loop, one that passes the checks): it fails, and is not kept while a reading
        that is neither is at hand.

        Otherwise the result is faster-whisper's: every temperature after the first is tried
        in turn, and where all fail, the best one kept."""

        def ran_out(decoded: tuple[Any, float, float, float]) -> bool:
            # Cut short, a beam search can end on a shorter loop that passes the checks.
            if cap is None:
                return False
            return len(decoded[0].sequences_ids[0]) >= cap or _loops(decoded, tokenizer)

        temperatures = list(options.temperatures)
        if not _falls_back(options):  # the caller's choice
            return self._decode_window(encoder_output, prompt, tokenizer, options)
        first = self._decode_window(
            encoder_output, prompt, tokenizer, dataclasses.replace(options, temperatures=[0.0])
        )
        if not ran_out(first) and (
            _passes(first, options) or _said_again(first, tokenizer, options)
        ):
            return first
        alone = _without_previous_text(prompt, tokenizer, options)
        if alone is not None:
            again = self._decode_window(
                encoder_output, alone, tokenizer, dataclasses.replace(options, temperatures=[0.0])
            )
            if not ran_out(again) and _passes(again, options):
                log.debug("a window that failed after its previous text read without it")
                return again
        readings = [first]
        unlooped = [] if ran_out(first) else [first]  # may be kept for compressing little
        for temperature in temperatures[1:]:
            sample = self._decode_window(
                encoder_output, prompt, tokenizer,
                dataclasses.replace(options, temperatures=[temperature]),
            )  # fmt: skip
            readings.append(sample)
            if ran_out(sample) or _loops(sample, tokenizer):
                log.debug("a sampled reading loops: %r", _text(sample, tokenizer))
                continue
            if _passes(sample, options):
                return sample
            unlooped.append(sample)
        # Every temperature failed: faster-whisper keeps the most probable reading of those
        # that do not compress too well (of all, if none), with the last temperature. A sample
        # that loops compresses too well for this, however its whole text compresses.
        threshold = options.compression_ratio_threshold
        below = [r for r in unlooped if threshold is not None and r[3] <= threshold]
        bounded = [r for r in readings if not ran_out(r)]
        kept = max(below or bounded or readings, key=lambda r: r[1])
        return kept[0], kept[1], temperatures[-1], kept[3]

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """The language of `audio` (its first 30 s) and its probability; on an English-only
        model, English.

        Detected on exactly the window faster-whisper transcribes first.

        Left to itself, faster-whisper detects on a window that keeps the last frame of a short
        clip, which its transcription then drops, so the two encodings differ by a frame and
        neither can stand in for the other. Detecting on the transcribed window makes the
        transcription's own encoding the one reused, so the text is the raw engine's. The mel
        features are computed here and again by faster-whisper (about 25 ms for 30 s, against
        the second encoder pass of about a second that this saves).
        """
        if not self.multilingual:
            return "en", 1.0
        features = self._model.feature_extractor(audio)
        frames = max(1, features.shape[-1] - 1)  # a blip of audio still gets one frame
        language, probability, _ = self._model.detect_language(features=features[:, :frames])
        return language, float(probability)


def _passes(decoded: tuple[Any, float, float, float], options: Any) -> bool:
    """Whether a window's reading needs no fallback, by faster-whisper's rules (a reading of
    silence needs none: faster-whisper skips the window)."""
    result, logprob, _, ratio = decoded
    improbable = options.log_prob_threshold is not None and logprob < options.log_prob_threshold
    if (
        improbable
        and options.no_speech_threshold is not None
        and result.no_speech_prob > options.no_speech_threshold
    ):
        return True
    threshold = options.compression_ratio_threshold
    return not improbable and (threshold is None or ratio <= threshold)


def _falls_back(options: Any) -> bool:
    """Whether a window whose reading fails is read again at higher temperatures (Whisper's
    schedule, from 0), not only at the one temperature the caller chose."""
    temperatures = list(options.temperatures)
    return len(temperatures) > 1 and temperatures[0] == 0.0


def _without_previous_text(prompt: list[int], tokenizer: Any, options: Any) -> list[int] | None:
    """`prompt` without the window's previous text (Whisper's own: the text of the windows
    before it), or None where it has none, or where the caller gave a prompt or hotwords,
    which that text begins with."""
    if options.initial_prompt is not None or options.hotwords is not None:
        return None
    if not prompt or prompt[0] != tokenizer.sot_prev or tokenizer.sot not in prompt:
        return None
    return prompt[prompt.index(tokenizer.sot) :]


def _said_again(decoded: tuple[Any, float, float, float], tokenizer: Any, options: Any) -> bool:
    """Whether a reading fails Whisper's checks only for compressing too well, and would pass
    without its segments whose words all stand, in order, in its text before them: sentences
    said again at their own times (`_REPEAT_WORDS` words or more; a sentence is not always cut
    into segments the same way twice). Not where any segment's words come faster than anyone
    speaks: a sentence said twice was once written three times, once in 0.75 s. Nor where the
    reading compresses far more than Whisper allows (`_SAID_AGAIN_MOST`): a loop. A loop
    inside a segment still fails; a segment written again in a loop is the long-form reader's
    to judge (`longform._without_loops` reads its audio alone)."""
    result, logprob, _, ratio = decoded
    threshold = options.compression_ratio_threshold
    if threshold is None or not threshold < ratio <= _SAID_AGAIN_MOST * threshold:
        return False
    if options.log_prob_threshold is not None and logprob < options.log_prob_threshold:
        return False
    segments = _timed_segments(result.sequences_ids[0], tokenizer)
    if segments is None:
        return False
    before = " "  # the words of the window's text so far
    kept: list[str] = []
    repeats = 0
    for start, end, text in segments:
        words = words_of(text.lower())
        if len(words) >= _REPEAT_WORDS and end is not None:
            if len(words) > FASTEST_WORDS_PER_SECOND * (end - start) * _TIMESTAMP_SECONDS:
                return False  # faster than anyone speaks: the reading is not to be trusted
            if f" {' '.join(words)} " in before:
                repeats += 1
                continue
        kept.append(text)
        before += " ".join(words) + " "
    from faster_whisper.transcribe import get_compression_ratio  # loaded with the model

    if not repeats or get_compression_ratio("".join(kept).strip()) > threshold:
        return False
    log.debug("kept a reading that repeats %d sentence(s) of its window", repeats)
    return True


def _loops(decoded: tuple[Any, float, float, float], tokenizer: Any) -> bool:
    """Whether a reading writes a run of `_REPEAT_WORDS` words or more twice in a row within
    one of its segments: a decoding loop, though its whole text may compress less than
    Whisper's checks catch. Over 25 s of a chord that VAD took for speech, whisper-base's
    readings failed at temperature 0 ("And so am I.", the speaker's first words at its end),
    and about one sample in three hundred passed the checks; on a CI machine the one that
    passed was "I don't know what you're talking about," three times over (compression under
    2.4), kept and written over the music. A speaker saying a sentence again pauses, and
    Whisper times the sayings apart."""
    segments = _timed_segments(decoded[0].sequences_ids[0], tokenizer)
    if segments is None:
        segments = [(0, None, _text(decoded, tokenizer))]
    return any(repeated_in_a_row(words_of(text.lower()), _REPEAT_WORDS) for _, _, text in segments)


def _text(decoded: tuple[Any, float, float, float], tokenizer: Any) -> str:
    return str(tokenizer.decode([t for t in decoded[0].sequences_ids[0] if t < tokenizer.eot]))


def _timed_segments(tokens: list[int], tokenizer: Any) -> list[tuple[int, int | None, str]] | None:
    """A window's tokens as its segments: (start, end, text), times in timestamp steps, the
    last one's end None where the window cuts it short; None if its text is not timed."""
    segments: list[tuple[int, int | None, str]] = []
    start: int | None = None
    text: list[int] = []
    for token in tokens:
        if token < tokenizer.timestamp_begin:
            if start is None:
                return None
            text.append(token)
        elif start is None:
            start = token - tokenizer.timestamp_begin
        else:
            if text:
                segments.append((start, token - tokenizer.timestamp_begin, tokenizer.decode(text)))
            start, text = None, []
    if text and start is not None:
        segments.append((start, None, tokenizer.decode(text)))
    return segments


class _ReuseLastEncoding:
    """Stands in for `WhisperModel.encode`: each thread's last window and its encoding are kept,
    and the same window asked again gets the kept encoding instead of a second encoder pass.
    The encoder is deterministic, so this changes no result; `forget` drops what a thread kept
    once its transcription is over. Inside `cut_to` (a draft) windows are encoded cut short."""

    def __init__(self, encode: Callable[[np.ndarray], Any]) -> None:
        self._encode = encode
        self._local = threading.local()
        self.reused = 0

    @contextlib.contextmanager
    def cut_to(self, frames: int, whole_if_failed: bool = False) -> Iterator[None]:
        """Windows this thread encodes inside the block are cut to their first `frames`.
        `whole_if_failed`: a window whose reading fails is read again whole (`whole`)."""
        self._local.frames = frames
        self._local.whole_if_failed = whole_if_failed
        try:
            yield
        finally:
            self._local.frames = None
            self._local.whole_if_failed = False
            self._local.uncut = None

    def cutting_short(self, cut_short: bool = True) -> contextlib.AbstractContextManager[None]:
        """Inside the block, a window this thread encodes that holds audio short of a whole
        window's less the padding (a piece's last) is encoded cut to its audio and
        `_DRAFT_PADDING_SECONDS`, and read again whole where its reading fails. Taken around each
        step of a decoding (`_each_step_within`), so that other transcriptions this thread makes
        in between are read as their own options say."""
        return _set_for_thread(self._local, "cut_short", cut_short)

    def whole_if_failed(self) -> bool:
        """Whether this thread's last window was encoded cut short, to be read again whole
        where its reading fails (`cut_to`, `cutting_short`)."""
        cut = getattr(self._local, "uncut", None) is not None
        asked = getattr(self._local, "whole_if_failed", False)
        return cut and (asked or getattr(self._local, "cut_short", False))

    def whole(self) -> Any:
        """The encoding of this thread's last window, not cut short."""
        return self._encode(np.ascontiguousarray(self._local.uncut))

    def is_tail(self) -> bool:
        """Whether this thread's last window holds less than `_TAIL_SECONDS` of audio and is
        not the first of its transcription."""
        windows, frames = getattr(self._local, "windows", 0), getattr(self._local, "content", 0)
        return windows > 1 and frames < _TAIL_SECONDS * _FRAMES_PER_SECOND

    def seconds(self) -> float:
        """The length of the audio in this thread's last window."""
        return getattr(self._local, "content", 0) / _FRAMES_PER_SECOND

    def __call__(self, features: np.ndarray) -> Any:
        array = np.asarray(features)
        # The window's audio ends where faster-whisper's zero padding begins.
        audible = np.flatnonzero(np.any(array.reshape(-1, array.shape[-1]) != 0, axis=0))
        content = int(audible[-1]) + 1 if audible.size else 0
        frames = getattr(self._local, "frames", None)
        if frames is None and getattr(self._local, "cut_short", False):
            seconds = int(np.ceil(content / _FRAMES_PER_SECOND + _DRAFT_PADDING_SECONDS))
            frames = seconds * _FRAMES_PER_SECOND
        self._local.uncut = None
        if frames is not None and frames < array.shape[-1]:
            features = np.ascontiguousarray(array[..., :frames])
            self._local.uncut = array
        last = getattr(self._local, "last", None)
        if last is not None and np.array_equal(last[0], features):
            self.reused += 1
            return last[1]
        self._local.content = content
        self._local.windows = getattr(self._local, "windows", 0) + 1
        encoded = self._encode(features)
        self._local.last = (np.array(features, copy=True), encoded)
        return encoded

    def forget(self) -> None:
        self._local.last = None
        self._local.windows = 0


@contextlib.contextmanager
def _set_for_thread(local: threading.local, name: str, value: object) -> Iterator[None]:
    """This thread's `local.<name>` is `value` inside the block, and as it was (or unset) after."""
    unset = object()
    previous = getattr(local, name, unset)
    setattr(local, name, value)
    try:
        yield
    finally:
        if previous is unset:
            delattr(local, name)
        else:
            setattr(local, name, previous)


def _each_step_within(
    segments: Iterator[Segment], within: Callable[[], contextlib.AbstractContextManager[None]]
) -> Iterator[Segment]:
    """`segments`, each step of their decoding taken inside `within()`: what a transcription
    sets for its own windows is set on whichever thread reads its next segment, and only while
    it does. Closed, it closes `segments` (a caller that stops reading ends the decoding)."""
    try:
        while True:
            with within():
                try:
                    segment = next(segments)
                except StopIteration:
                    return
            yield segment
    finally:
        close = getattr(segments, "close", None)
        if close is not None:
            close()


def _convert(segments: Iterator, on_end: Callable[[], None]) -> Iterator[Segment]:
    try:
        yield from _segments(segments)
    finally:
        on_end()


def _segments(segments: Iterator) -> Iterator[Segment]:
    for s in segments:
        words = None
        if s.words is not None:
            words = tuple(
                Word(start=float(w.start), end=float(w.end), word=w.word,
                     probability=float(w.probability))
                for w in s.words
            )  # fmt: skip
        yield Segment(
            id=int(s.id),
            seek=int(s.seek),
            start=float(s.start),
            end=float(s.end),
            text=s.text,
            tokens=tuple(s.tokens),
            temperature=float(s.temperature or 0.0),
            avg_logprob=float(s.avg_logprob),
            compression_ratio=float(s.compression_ratio),
            no_speech_prob=float(s.no_speech_prob),
            words=words,
        )
