"""The engine under the scheduler: one encoder pass per short clip when the language is unknown,
with the raw engine's words, and a batcher whose executors lose no call under contention."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest

from harken.audio import decode_audio
from harken.catalog import Catalog
from harken.config import Settings
from harken.engine import TranscriptionOptions, batching
from harken.engine.batching import BatchingWhisper, SiblingGroup
from harken.engine.whisper import FasterWhisperTranscriber
from tests.conftest import wer

# English, Mandarin and French, all under 30 s: each is one window.
CLIPS = ["jfk_inaugural_1961", "aishell1_BAC009S0764W0122", "picovoice_test_fr"]


@pytest.fixture(scope="module")
def base_weights(harken_home: Path) -> Path:
    settings = Settings(home=harken_home)
    return Catalog(settings).resolve("whisper-base").weights(settings)


@pytest.fixture(scope="module")
def unbatched(base_weights: Path) -> FasterWhisperTranscriber:
    return FasterWhisperTranscriber("whisper-base", base_weights, device="cpu", batch_size=1)


def test_an_unknown_language_costs_one_encoder_pass_and_keeps_the_raw_engines_words(
    base_weights: Path, speech: dict[str, Any]
) -> None:
    from faster_whisper import WhisperModel

    raw = WhisperModel(str(base_weights), device="cpu", compute_type="float32", cpu_threads=2)
    raw_passes = 0
    raw_encode = raw.encode

    def counting_encode(features: Any) -> Any:
        nonlocal raw_passes
        raw_passes += 1
        return raw_encode(features)

    raw.encode = counting_encode  # type: ignore[method-assign]
    ours = FasterWhisperTranscriber(
        "whisper-base", base_weights, device="cpu", cpu_threads=2, batch_size=8, max_concurrency=2
    )
    assert ours.batcher is not None
    try:
        for name in CLIPS:
            audio = decode_audio(speech[name].bytes())
            segments, info = raw.transcribe(audio, beam_size=5)
            want = "".join(s.text for s in segments)

            windows = ours.batcher.stats.windows
            result = ours.transcribe(audio, TranscriptionOptions())
            have = "".join(s.text for s in result.segments)

            assert have == want, name
            assert result.info.language == info.language == speech[name].language, name
            assert result.info.language_probability == pytest.approx(
                info.language_probability, abs=0.02
            )
            assert ours.batcher.stats.windows - windows == 1, f"{name}: encoded more than once"
        # The raw engine encodes each clip twice: once to detect the language, once to read it.
        assert raw_passes == 2 * len(CLIPS)
    finally:
        ours.batcher.close()


def test_a_known_language_is_not_detected(
    unbatched: FasterWhisperTranscriber, speech: dict[str, Any]
) -> None:
    audio = decode_audio(speech["picovoice_test_fr"].bytes())
    result = unbatched.transcribe(audio, TranscriptionOptions(language="fr"))
    assert result.info.language == "fr"
    assert result.info.language_probability == 1
    assert "".join(s.text for s in result.segments).strip()


@pytest.mark.parametrize("samples", [1, 159, 160, 161, 480])
def test_a_blip_of_audio_still_gets_a_language(
    unbatched: FasterWhisperTranscriber, samples: int
) -> None:
    audio = (np.sin(np.arange(samples) / 5.0) * 0.1).astype(np.float32)
    result = unbatched.transcribe(audio, TranscriptionOptions())
    list(result.segments)
    assert result.info.language in unbatched.supported_languages()


class _Doubler:
    """A stand-in for CTranslate2's Whisper with the same call shapes: `encode` doubles the
    features, `generate` echoes each prompt. Slow enough that callers pile up."""

    def encode(self, features: Any, to_cpu: bool = False) -> Any:
        time.sleep(0.001)
        return ctranslate2.StorageView.from_array(np.asarray(features) * 2)

    def generate(self, features: Any, prompts: list[list[int]], **options: Any) -> list[Any]:
        time.sleep(0.001)
        return [list(prompt) for prompt in prompts]


def test_two_executors_lose_no_call_when_they_race_for_the_same_work() -> None:
    # Two executors linger for the same returning callers; one takes the calls, and the other
    # must go back to waiting (it once died on an empty queue, leaving callers hanging).
    batcher = BatchingWhisper(_Doubler(), sot_token=1, max_batch=4, executors=2)

    def caller(worker: int) -> int:
        for round_ in range(60):
            value = worker * 1000 + round_
            features = np.full((1, 4, 6), value, dtype=np.float32)
            encoded = np.asarray(batcher.encode(features))
            assert (encoded == 2 * value).all()
            assert batcher.generate(features, [[1, worker, round_]]) == [[1, worker, round_]]
        return worker

    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(caller, worker) for worker in range(8)]
            assert sorted(f.result(timeout=60) for f in futures) == list(range(8))
        assert all(thread.is_alive() for thread in batcher._threads)
        assert any(size > 1 for (_, size) in batcher.stats.batches), "nothing was batched"
    finally:
        batcher.close()


@pytest.fixture
def patient_siblings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Siblings wait for one another as long as a test needs (never split by a wait running
    out)."""
    monkeypatch.setattr(batching, "SIBLING_WAIT_SECONDS", 60.0)
    monkeypatch.setattr(batching, "SIBLING_IDLE_SECONDS", 60.0)


@pytest.mark.usefixtures("patient_siblings")
def test_siblings_beam_searches_run_as_one_batch_per_prompt_length() -> None:
    # Pieces of one recording: each round, every sibling still reading is waited for (never
    # split by the wait running out: the waits are made long here), then those whose prompts
    # have one length run as one batch, the others in a batch of their own; no prompt is
    # changed, and one that has finished is not waited for.
    seen: dict[int, list[int]] = {}  # prompt length → the size of each batch, in turn

    class Recorder(_Doubler):
        def generate(self, features: Any, prompts: list[list[int]], **options: Any) -> list[Any]:
            (length,) = {len(prompt) for prompt in prompts}
            seen.setdefault(length, []).append(len(prompts))
            return super().generate(features, prompts, **options)

    batcher = BatchingWhisper(Recorder(), sot_token=1, max_batch=8, executors=2)
    group = SiblingGroup()
    windows = {worker: 3 + worker for worker in range(4)}  # the siblings finish one by one
    joined = threading.Barrier(len(windows))

    def sibling(worker: int) -> None:
        with group.member():
            joined.wait()
            for _ in range(windows[worker]):
                features = np.full((1, 4, 6), worker, dtype=np.float32)
                batcher.encode(features)
                previous = [100 + worker] * (5 if worker < 3 else 7)
                prompt = [0, *previous, 1, 2]  # <|startofprev|> ... <|sot|> ...
                assert batcher.generate(features, [prompt]) == [prompt]

    try:
        with ThreadPoolExecutor(len(windows)) as pool:
            for future in [pool.submit(sibling, worker) for worker in windows]:
                future.result(timeout=30)
    finally:
        batcher.close()
    assert seen == {8: [3, 3, 3, 2, 1], 10: [1] * 6}, seen


def _read_side_by_side(
    batcher: BatchingWhisper, group: SiblingGroup, prompts: list[list[int]]
) -> list[list[int]]:
    """Each prompt's window encoded and searched by a sibling of `group` of its own, all
    started at once: what the batcher gave each (a `_Doubler` gives back the prompt)."""
    joined = threading.Barrier(len(prompts))

    def sibling(prompt: list[int]) -> list[int]:
        with group.member():
            joined.wait()
            features = np.zeros((1, 4, 6), dtype=np.float32)
            batcher.encode(features)
            return batcher.generate(features, [prompt])[0]

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(sibling, prompts))


@pytest.mark.usefixtures("patient_siblings")
def test_siblings_previous_texts_are_cut_to_one_length_so_they_meet() -> None:
    # A group that cuts previous texts to 3 tokens: prompts with 5 and 7 tokens of it run as
    # one batch, each with its own last 3; a prompt without previous text is left as it is, and
    # so are the prompts of a group that does not cut.
    seen: list[list[list[int]]] = []

    class Recorder(_Doubler):
        def generate(self, features: Any, prompts: list[list[int]], **options: Any) -> list[Any]:
            seen.append(sorted(prompts))
            return super().generate(features, prompts, **options)

    batcher = BatchingWhisper(Recorder(), sot_token=1, max_batch=8, previous_token=0)

    try:
        five, seven = [0, 11, 12, 13, 14, 15, 1, 2], [0, 21, 22, 23, 24, 25, 26, 27, 1, 2]
        cut = _read_side_by_side(batcher, SiblingGroup(previous_tokens=3), [five, seven, [1, 2]])
        assert cut == [[0, 13, 14, 15, 1, 2], [0, 25, 26, 27, 1, 2], [1, 2]]
        assert sorted(seen) == [[[0, 13, 14, 15, 1, 2], [0, 25, 26, 27, 1, 2]], [[1, 2]]]
        assert _read_side_by_side(batcher, SiblingGroup(), [five, seven]) == [five, seven]
    finally:
        batcher.close()


@pytest.mark.usefixtures("patient_siblings")
def test_siblings_shorter_previous_texts_are_cut_to_a_set_length_so_they_meet() -> None:
    # A group that cuts previous texts to 64 tokens: first windows prompted with lead-ins of
    # 33 and 39 tokens are cut to their last 32 and run as one batch; 70 tokens are cut to 64;
    # 5 (shorter than any set length) are left as they are. Each length depends on the prompt
    # alone.
    assert batching.SHORTER_PREVIOUS_TOKENS[-2:] == (32, 48)
    seen: list[list[int]] = []

    class Recorder(_Doubler):
        def generate(self, features: Any, prompts: list[list[int]], **options: Any) -> list[Any]:
            seen.append(sorted(len(prompt) for prompt in prompts))
            return super().generate(features, prompts, **options)

    batcher = BatchingWhisper(Recorder(), sot_token=1, max_batch=8, previous_token=0)
    prompts = [[0, *range(100, 100 + n), 1, 2] for n in (33, 39, 70, 5)]
    try:
        read = _read_side_by_side(batcher, SiblingGroup(previous_tokens=64), prompts)
    finally:
        batcher.close()
    assert read == [[0, *range(101, 133), 1, 2], [0, *range(107, 139), 1, 2],
                    [0, *range(106, 170), 1, 2], prompts[3]]  # fmt: skip
    assert sorted(seen) == [[8], [35, 35], [67]]


def test_a_sibling_is_waited_for_while_the_model_works_and_not_once_it_is_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Round 1: sibling 1's encoder pass is slow (the model is busy), so sibling 0's beam search
    # waits for it, well past the idle time, and the two run as one batch. Round 2: sibling 1
    # is away from the model (Python, say) for 1.5 s; with the model idle, sibling 0 is let go
    # after the idle time instead of waiting for it.
    monkeypatch.setattr(batching, "SIBLING_WAIT_SECONDS", 60.0)
    monkeypatch.setattr(batching, "SIBLING_IDLE_SECONDS", 0.2)
    seen: list[int] = []

    class SlowForOne(_Doubler):
        def encode(self, features: Any, to_cpu: bool = False) -> Any:
            if np.asarray(features).flat[0] == 1:
                time.sleep(1.0)
            return super().encode(features, to_cpu)

        def generate(self, features: Any, prompts: list[list[int]], **options: Any) -> list[Any]:
            seen.append(len(prompts))
            return super().generate(features, prompts, **options)

    batcher = BatchingWhisper(SlowForOne(), sot_token=1, max_batch=8, executors=1)
    group = SiblingGroup()
    joined = threading.Barrier(2)
    waits: list[float] = []

    def sibling(worker: int) -> None:
        features = np.full((1, 4, 6), worker, dtype=np.float32)
        with group.member():
            joined.wait()
            batcher.encode(features)
            batcher.generate(features, [[1, 2]])
            if worker == 1:
                time.sleep(1.5)
            started = time.monotonic()
            batcher.generate(features, [[1, 2]])
            if worker == 0:
                waits.append(time.monotonic() - started)

    try:
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(sibling, worker) for worker in (0, 1)]:
                future.result(timeout=30)
    finally:
        batcher.close()
    assert seen == [2, 1, 1], seen
    assert waits[0] < 1.0, waits


def test_word_alignment_goes_through_the_queue_one_window_at_a_time() -> None:
    calls: list[tuple[int, int]] = []

    class Aligner(_Doubler):
        def align(self, features: Any, start: list[int], tokens: list[list[int]], frames: int,
                  **options: Any) -> list[Any]:  # fmt: skip
            calls.append((int(np.asarray(features).flat[0]), frames))
            time.sleep(0.01)
            return [("aligned", tokens, options["median_filter_width"])]

    batcher = BatchingWhisper(Aligner(), sot_token=1, max_batch=8, executors=2)
    start = threading.Barrier(6)

    def caller(worker: int) -> Any:
        features = ctranslate2.StorageView.from_array(np.full((1, 4, 6), worker, np.float32))
        start.wait()
        return batcher.align(features, [1], [[worker, 7]], 100 + worker, median_filter_width=7)

    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(caller, range(6)))
    finally:
        batcher.close()
    assert results == [[("aligned", [[worker, 7]], 7)] for worker in range(6)]
    assert sorted(calls) == [(worker, 100 + worker) for worker in range(6)]
    assert batcher.stats.batches[("align", 1)] == 6


def test_languages_detected_in_one_batch_each_go_to_their_own_request(
    base_weights: Path, unbatched: FasterWhisperTranscriber, speech: dict[str, Any]
) -> None:
    clips = ["picovoice_test_fr", "picovoice_test_de", "picovoice_test_es", "jfk_inaugural_1961"]
    audios = {name: decode_audio(speech[name].bytes()) for name in clips}
    alone = {name: unbatched.detect_language(audio) for name, audio in audios.items()}
    ours = FasterWhisperTranscriber(
        "whisper-base", base_weights, device="cpu", cpu_threads=2, batch_size=8, max_concurrency=2
    )
    assert ours.batcher is not None
    start = threading.Barrier(len(clips))

    def detect(name: str) -> tuple[str, float]:
        start.wait()
        return ours.detect_language(audios[name])

    try:
        with ThreadPoolExecutor(len(clips)) as pool:
            together = dict(zip(clips, pool.map(detect, clips), strict=True))
        detected = [size for (kind, size) in ours.batcher.stats.batches if kind == "detect"]
        assert max(detected) > 1, f"no detection was batched: {ours.batcher.stats.batches}"
    finally:
        ours.batcher.close()
    for name in clips:
        assert together[name][0] == alone[name][0] == speech[name].language, name
        assert together[name][1] == pytest.approx(alone[name][1], abs=0.01), name


def test_a_draft_encodes_a_short_window_and_reads_the_same_words(
    base_weights: Path, speech: dict[str, Any]
) -> None:
    # Live partial text: the first 3 s of a clip read as a draft encode the audio and 8 s of
    # padding (1100 frames), not a 30-second window, with or without the batcher in between,
    # and give the full window's words; a draft's length in tokens is bounded.
    audio = decode_audio(speech["jfk_inaugural_1961"].bytes())[: 3 * 16_000]
    for batch_size in (1, 8):
        model = FasterWhisperTranscriber(
            "whisper-base", base_weights, device="cpu", batch_size=batch_size, max_concurrency=2
        )
        frames: list[int] = []
        encode = model._encodings._encode

        def counting(features: Any, encode: Any = encode, frames: list[int] = frames) -> Any:
            frames.append(np.asarray(features).shape[-1])
            return encode(features)

        model._encodings._encode = counting
        lengths: list[int | None] = []
        transcribe = model._model.transcribe

        def bounded(
            *args: Any, transcribe: Any = transcribe, lengths: list[Any] = lengths, **kwargs: Any
        ) -> Any:
            lengths.append(kwargs.get("max_new_tokens"))
            return transcribe(*args, **kwargs)

        model._model.transcribe = bounded  # type: ignore[method-assign]
        try:
            options = TranscriptionOptions(language="en", temperature=0.0)
            full = "".join(s.text for s in model.transcribe(audio, options).segments)
            draft_options = dataclasses.replace(options, draft=True)
            draft = "".join(s.text for s in model.transcribe(audio, draft_options).segments)
            # Unknown language: detected on the draft's own short window, encoded once.
            detected = model.transcribe(audio, dataclasses.replace(draft_options, language=None))
            assert detected.info.language == "en"
            list(detected.segments)
        finally:
            if model.batcher is not None:
                model.batcher.close()
        assert frames == [3000, 1100, 1100], frames
        assert lengths == [None, 40, 40], "a draft of 3 s stops after 10 tokens a second, +10"
        assert _plain(draft) == _plain(full) == "and so my fellow americans", (draft, full)


def test_a_short_window_is_read_cut_and_read_whole_where_it_fails(
    harken_home: Path, unbatched: FasterWhisperTranscriber, speech: dict[str, Any]
) -> None:
    # The first piece of a long recording: the encoder reads the audio and 8 s of padding, and
    # the words are the whole window's. Where the short window's reading fails (whisper-tiny.en
    # read "five, five", 1.8 s, as "5 5 5 5 ..." there), the window is read whole (3000 frames),
    # as without the option; the short window's reading is bounded, a loop cut short. Where the
    # language is unknown, nothing is cut: it is detected on the whole window.
    from tests.test_hard_audio import levelled

    tiny = _tiny_en(harken_home, batch_size=8)
    frames: list[int] = []
    bounds: list[int | None] = []  # each reading's max_new_tokens

    def counting(model: FasterWhisperTranscriber) -> None:
        encode, decode = model._encodings._encode, model._decode_window

        def encoding(features: Any) -> Any:
            frames.append(np.asarray(features).shape[-1])
            return encode(features)

        def decoding(*args: Any) -> Any:
            bounds.append(args[-1].max_new_tokens)
            return decode(*args)

        model._encodings._encode = encoding
        model._decode_window = decoding  # type: ignore[method-assign]

    counting(tiny)
    counting(unbatched)
    jfk = decode_audio(speech["jfk_inaugural_1961"].bytes())  # 11.0 s
    pad = np.zeros(1600, dtype=np.float32)
    cards = decode_audio(speech["sphinx_cards_004"].bytes())  # 1.6 s
    five = np.concatenate([pad, levelled(cards, -23.0), pad])
    quick = TranscriptionOptions(language="en", short_window=True)
    try:
        for audio, cut in ((jfk, 1900), (five, 1000)):
            frames.clear()
            plain = dataclasses.replace(quick, short_window=False)
            whole = "".join(s.text for s in tiny.transcribe(audio, plain).segments)
            assert frames == [3000]
            frames.clear()
            bounds.clear()
            short = list(tiny.transcribe(audio, quick).segments)
            assert [s.temperature for s in short] == [0.0] * len(short)
            assert _plain("".join(s.text for s in short)) == _plain(whole)
            first = int(20 * (audio.shape[0] / 16_000 + 1))  # 20 tokens a second, and 20
            if audio is jfk:
                assert (frames, bounds) == ([cut], [first])
            else:  # "5 5 5 5 ...": read whole after failing, as without the option, and
                # bounded as the short reading was: that audio holds no more words whole.
                assert (frames, bounds) == ([cut, 3000], [first, first])
        frames.clear()
        detected = unbatched.transcribe(jfk, dataclasses.replace(quick, language=None))
        assert detected.info.language == "en"
        list(detected.segments)
        assert frames == [3000], "the language is told from the whole window, encoded once"
    finally:
        assert tiny.batcher is not None
        tiny.batcher.close()


def test_a_short_last_window_of_long_audio_is_read_cut(
    harken_home: Path, speech: dict[str, Any]
) -> None:
    # A piece of a long recording (`short_window`) longer than a window: the first window is
    # encoded whole, the last, holding what is left (under 22 s), cut to it and 8 s of padding,
    # and the words are those read without the option. Each transcription keeps to its own
    # options: one made between two of its windows, on the same thread, encodes whole windows.
    tiny = _tiny_en(harken_home, batch_size=8)
    frames: list[int] = []
    encode = tiny._encodings._encode

    def encoding(features: Any) -> Any:
        frames.append(np.asarray(features).shape[-1])
        return encode(features)

    tiny._encodings._encode = encoding
    audio = _a_second_apart([decode_audio(speech[n].bytes()) for n in _TWO_WINDOWS])
    assert 31 < audio.shape[0] / 16_000 < 45
    plain = TranscriptionOptions(language="en")
    short = dataclasses.replace(plain, short_window=True)
    try:
        whole = "".join(s.text for s in tiny.transcribe(audio, plain).segments)
        assert len(frames) == 2 and frames[1] == 3000, frames
        frames.clear()
        read = tiny.transcribe(audio, short).segments
        first = next(read)
        between = list(tiny.transcribe(audio[: 20 * 16_000], plain).segments)
        rest = list(read)
    finally:
        assert tiny.batcher is not None
        tiny.batcher.close()
    assert frames[0] == frames[1] == 3000, "the first window, and another transcription's"
    assert len(frames) == 3 and frames[2] < 2200, frames
    assert between
    assert _plain("".join(s.text for s in (first, *rest))) == _plain(whole)


def test_a_window_whose_text_ends_early_is_read_on_where_speech_follows(
    harken_home: Path, speech: dict[str, Any]
) -> None:
    # Whisper ending a window's text early with a lone timestamp ("no more speech here") over
    # voices behind a speaker is not something tiny.en does on demand: here its real reading of
    # the first window is cut after the first segment that ends 10 s or more in, as it would
    # end there. faster-whisper then goes on at the window's end, and the two clips after that
    # timestamp are lost. Where the caller heard speech after it, the next window starts at the
    # timestamp, and every clip is read, in order; where the speech after it is a second (VAD's
    # padding at the end of a word), or none, the window is skipped as faster-whisper skips it.
    tiny = _tiny_en(harken_home, batch_size=1)
    decode = tiny._decode_window
    windows: list[int] = []  # how many windows each transcription read
    ended: list[float] = []  # where the first window's text was made to end

    def ending_early(encoder_output: Any, prompt: list[int], tokenizer: Any, options: Any) -> Any:
        result, logprob, temperature, ratio = decode(encoder_output, prompt, tokenizer, options)
        windows[-1] += 1
        if windows[-1] > 1:
            return result, logprob, temperature, ratio
        tokens, begin = result.sequences_ids[0], tokenizer.timestamp_begin
        last = next(
            i for i in range(1, len(tokens))
            if tokens[i - 1] >= begin and tokens[i] >= begin and (tokens[i - 1] - begin) >= 500
        )  # fmt: skip
        ended.append((tokens[last - 1] - begin) * 0.02)
        cut = types.SimpleNamespace(
            sequences_ids=[tokens[:last]], no_speech_prob=result.no_speech_prob
        )
        return cut, logprob, temperature, ratio

    tiny._decode_window = ending_early  # type: ignore[method-assign]
    clips = [decode_audio(speech[n].bytes()) for n in _TWO_WINDOWS]
    audio = _a_second_apart(clips)
    spans, start = [], 0.0
    for clip in clips:
        spans.append((start, start + clip.shape[0] / 16_000))
        start = spans[-1][1] + 1.0
    assert (
        spans[0][1] == pytest.approx(11.0, abs=0.1) and spans[2][1] < 30 < audio.shape[0] / 16_000
    )

    def read(heard: tuple[tuple[float, float], ...]) -> list[Any]:
        windows.append(0)
        options = TranscriptionOptions(language="en", speech=heard)
        return list(tiny.transcribe(audio, options).segments)

    skipped = read(())
    read_on = read(tuple(spans))
    tail = read(((0.0, ended[0] + 1.0),))  # a second of VAD's padding after the timestamp
    assert spans[0][1] - 1 <= ended[0] <= spans[1][0] + 0.5  # between the first two clips
    said = " ".join(speech[n].text for n in _TWO_WINDOWS)
    assert windows[0] == 2 and skipped[-1].start >= 30
    assert wer(said, "".join(s.text for s in skipped)) > 0.3, "two clips lost"
    # Read on: the second window starts where the first's text ended, and every clip is read
    # in order.
    assert round(ended[0] * 100) in {s.seek for s in read_on}
    assert windows[1] == 2
    assert wer(said, "".join(s.text for s in read_on)) < 0.1
    assert [s.text for s in tail] == [s.text for s in skipped]


def test_a_loop_is_not_taken_for_a_sentence_said_again(unbatched: FasterWhisperTranscriber) -> None:
    # Two readings of a window that fail Whisper's checks for compressing too well, as the
    # model gave them: a speaker saying a sentence three times (kept, not sampled again), and
    # a loop over a crowd talking behind a speaker who said other things (sampled again, as
    # Whisper would). Before the loop's compression was asked, both were kept.
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_compression_ratio

    from harken.engine.whisper import _said_again

    tokenizer = Tokenizer(unbatched._model.hf_tokenizer, True, "transcribe", "en")
    # faster-whisper's defaults for the two checks the rule reads
    checks = types.SimpleNamespace(compression_ratio_threshold=2.4, log_prob_threshold=-1.0)

    def reading(texts: list[str], seconds: float) -> tuple[Any, float, float, float]:
        tokens: list[int] = []
        for index, text in enumerate(texts):
            start = tokenizer.timestamp_begin + round(index * seconds / 0.02)
            tokens += [start, *tokenizer.encode(text), start + round(seconds / 0.02)]
        window = types.SimpleNamespace(sequences_ids=[tokens], no_speech_prob=0.07)
        return window, -0.1, 0.0, get_compression_ratio("".join(texts).strip())

    said = " Mr. Quilter is the apostle of the middle classes, and we are glad to welcome him."
    loop = " and I'm trying to reach out to you, and I'm trying to reach out to you,"
    assert 2.4 < reading([said] * 3, 7.0)[3] < 4.8 < reading([loop] * 10, 2.0)[3]
    assert _said_again(reading([said] * 3, 7.0), tokenizer, checks)
    assert not _said_again(reading([loop] * 10, 2.0), tokenizer, checks)


@dataclasses.dataclass
class _FallbackOptions:
    """What the fallback rules read of faster-whisper's options, at its defaults."""

    temperatures: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    )
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    initial_prompt: str | None = None
    hotwords: str | None = None


def test_a_sampled_reading_that_loops_is_not_kept(unbatched: FasterWhisperTranscriber) -> None:
    # 25 s of a chord that VAD took for speech, then a speaker's first words: whisper-base's
    # reading at temperature 0 fails ("And so am I.", improbable), and most samples at higher
    # temperatures fail too; on one CI run a sample that passed Whisper's checks, a sentence
    # three times over, was kept and written over the music. Samples are random, so these
    # readings are scripted: the ones the model gave.
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_compression_ratio

    tokenizer = Tokenizer(unbatched._model.hf_tokenizer, True, "transcribe", "en")
    loop = " I don't know what you're talking about," * 3

    options = _FallbackOptions()

    def reading(text: str, at: float, logprob: float, temperature: float) -> Any:
        start = tokenizer.timestamp_begin + round(at / 0.02)
        tokens = [start, *tokenizer.encode(text), start + 50]
        window = types.SimpleNamespace(sequences_ids=[tokens], no_speech_prob=0.24)
        return window, logprob, temperature, get_compression_ratio(text.strip())

    first = reading(" And so am I.", 25.0, -1.15, 0.0)
    decode = unbatched._decode_window

    def read(sampled: Any) -> tuple[Any, list[float]]:
        """The reading kept where the sample at 0.4 is `sampled`, and the temperatures read."""
        asked: list[float] = []

        def decoding(encoder_output: Any, prompt: Any, tokenizer: Any, options: Any) -> Any:
            (temperature,) = options.temperatures
            asked.append(temperature)
            samples = {0.0: first, 0.4: sampled}
            return samples.get(temperature, reading(" Music", 0.0, -1.3, temperature))

        unbatched._decode_window = decoding  # type: ignore[method-assign]
        try:
            return unbatched._decode_window_or_repeats(None, [], tokenizer, options), asked
        finally:
            unbatched._decode_window = decode  # type: ignore[method-assign]

    looping = reading(loop, 0.0, -0.4, 0.4)
    assert looping[3] <= 2.4  # it passes Whisper's own checks
    # Taken as failed: every temperature is read, and of the readings, all failed, the loop is
    # not the one kept, though the most probable.
    kept, asked = read(looping)
    assert asked == options.temperatures
    assert kept[0] is first[0] and kept[2] == 1.0
    # A sample that passes and does not loop is taken, as Whisper takes it.
    passing = reading(" Stuff it into you.", 0.0, -0.4, 0.4)
    assert read(passing) == (passing, [0.0, 0.2, 0.4])


def test_a_short_window_read_whole_stops_its_loops_at_the_short_ones_bound(
    unbatched: FasterWhisperTranscriber,
) -> None:
    # Speech read again alone (a few seconds, `short_window`) whose short reading failed is
    # read on the whole window, where Whisper looped on it at every temperature, up to 224
    # tokens (5-7 s) a reading: "5, 5, 4, 3, 4, 3, ..." over 1.7 s of talk 10 dB under a
    # speaker, whisper-base. There each reading stops at the short reading's bound. One that
    # runs to it is a loop, and so is one cut short to a loop that ended (with the bound, the
    # beam search ended on "5, 5, 4, 3, 4, 3, 4, 3, ...", 32 tokens, compression 2.3, which
    # passes Whisper's checks): neither is kept while a reading that does not loop is at hand.
    # Samples are random, so these readings are scripted: the ones the model gave.
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_compression_ratio

    tokenizer = Tokenizer(unbatched._model.hf_tokenizer, True, "transcribe", "en")

    options = _FallbackOptions()

    def reading(text: str, logprob: float, temperature: float, ended: bool = True) -> Any:
        tokens = [tokenizer.timestamp_begin, *tokenizer.encode(text)]
        tokens += [tokenizer.timestamp_begin + 85] if ended else []
        window = types.SimpleNamespace(sequences_ids=[tokens], no_speech_prob=0.41)
        return window, logprob, temperature, get_compression_ratio(text.strip())

    ran_on = reading(
        " Flower packet ways, and we cannot let the love go flat. Ten of clubs, go forward ten"
        " meters, and so my fellow Americans ask not what your country can do for you.",
        -0.3,
        0.2,
        ended=False,
    )
    cap = len(ran_on[0].sequences_ids[0])
    ended_in_a_loop = reading(" 5, 5," + " 4, 3," * 6, -0.55, 0.0)
    assert len(ended_in_a_loop[0].sequences_ids[0]) < cap and ended_in_a_loop[3] <= 2.4
    passing = reading(" 5, 5, 1", -0.9, 0.4)
    decode = unbatched._decode_window

    def read(readings: dict[float, Any], bound: int | None) -> tuple[Any, list[float]]:
        asked: list[float] = []

        def decoding(encoder_output: Any, prompt: Any, tokenizer: Any, options: Any) -> Any:
            (temperature,) = options.temperatures
            asked.append(temperature)
            return readings.get(temperature, reading(" 5, 5, 5", -1.3, temperature))

        unbatched._decode_window = decoding  # type: ignore[method-assign]
        try:
            kept = unbatched._decode_window_or_repeats(None, [], tokenizer, options, bound)
            return kept, asked
        finally:
            unbatched._decode_window = decode  # type: ignore[method-assign]

    bounded = {0.0: ended_in_a_loop, 0.2: ran_on, 0.4: passing}
    assert read(bounded, cap) == (passing, [0.0, 0.2, 0.4])
    # Unbounded (a whole window of audio), the first reading passes, as Whisper takes it.
    assert read(bounded, None) == (ended_in_a_loop, [0.0])
    # Where every reading fails, one that did not loop is kept (the most probable of them).
    kept, asked = read({0.0: ended_in_a_loop, 0.2: ran_on}, cap)
    assert asked == options.temperatures
    assert kept[0].sequences_ids[0][1:-1] == tokenizer.encode(" 5, 5, 5")


# A piece of a recording built apart from the tests (tests/data/README.md): seven clips over
# synthetic chords 15 dB under, cut where harken cut it. Its second window, read after the
# first's text ("... 8 of Spades, 4 of Clothes, 7 of Hearts"), looped at temperature 0.
_LOOP_PIECE = Path(__file__).resolve().parent / "data/built/cards_then_cats_over_chords.flac"
_LOOP_PIECE_CLIPS = (
    "ls_2412-153948-0001", "librivox_sns01_0920", "sphinx_cards_001", "sphinx_cards_005",
    "ls_1988-24833-0003", "ls_1089-134686-0001",
)  # fmt: skip


def test_a_window_that_loops_after_its_previous_text_is_read_without_it(
    unbatched: FasterWhisperTranscriber, speech: dict[str, Any]
) -> None:
    # Read after the first window's text, the second window's reading at temperature 0 was
    # "18, 18, 18, ..." (compression 19.5), and so at every higher temperature: five sampled
    # readings, and one kept that lost "Stuff it into you, his belly counselled him." (a
    # random sample: the passage, or "17 of oscarite-go ..."). Read again at temperature 0
    # without that text, it passes; cut short, so does that window's short reading, and the
    # whole window (where the loop ran to its end) is not read.
    from harken.audio import decode_pcm16

    prompts: list[list[int]] = []
    decode = unbatched._decode_window

    def decoding(encoder_output: Any, prompt: list[int], *rest: Any) -> Any:
        prompts.append(list(prompt))
        return decode(encoder_output, prompt, *rest)

    unbatched._decode_window = decoding  # type: ignore[method-assign]
    audio = decode_pcm16(_LOOP_PIECE.read_bytes())
    said = [speech[clip].text for clip in _LOOP_PIECE_CLIPS]
    reference = " ".join([*said, "And so my fellow Americans"])
    previous = unbatched._tokenizer.token_to_id("<|startofprev|>")
    # Read as a piece is (its last window cut short, `short_window`) and as any audio.
    try:
        for short_window in (True, False):
            prompts.clear()
            options = TranscriptionOptions(language="en", short_window=short_window)
            segments = list(unbatched.transcribe(audio, options).segments)
            assert [(s.start, s.text) for s in segments if s.temperature > 0] == []
            text = " ".join(s.text for s in segments)
            assert "his belly" in text.lower()
            assert wer(reference, text) <= 0.15
            # Two windows: the second read with the first's text, and again without it.
            assert [p[0] == previous for p in prompts] == [False, True, False]
    finally:
        unbatched._decode_window = decode  # type: ignore[method-assign]


def test_only_whispers_own_previous_text_is_left_out_on_a_retry(
    unbatched: FasterWhisperTranscriber,
) -> None:
    from faster_whisper.tokenizer import Tokenizer

    from harken.engine.whisper import _without_previous_text

    tokenizer = Tokenizer(unbatched._model.hf_tokenizer, True, "transcribe", "en")
    words = tokenizer.encode(" 8 of Spades, 4 of Clothes, 7 of Hearts")
    start = list(tokenizer.sot_sequence)
    plain = types.SimpleNamespace(initial_prompt=None, hotwords=None)
    assert _without_previous_text([tokenizer.sot_prev, *words, *start], tokenizer, plain) == start
    assert _without_previous_text(start, tokenizer, plain) is None  # nothing to leave out
    # A caller's prompt or hotwords open the previous text: kept, and no retry.
    for asked in ({"initial_prompt": "Cards"}, {"hotwords": "Spades"}):
        options = types.SimpleNamespace(**{**vars(plain), **asked})
        prompt = [tokenizer.sot_prev, *words, *start]
        assert _without_previous_text(prompt, tokenizer, options) is None


def _tiny_en(harken_home: Path, batch_size: int) -> FasterWhisperTranscriber:
    settings = Settings(home=harken_home)
    weights = Catalog(settings).resolve("whisper-tiny.en").weights(settings)
    return FasterWhisperTranscriber("whisper-tiny.en", weights, device="cpu", batch_size=batch_size)


# Four English clips that, a second apart, fill two windows (31-45 s).
_TWO_WINDOWS = (
    "jfk_inaugural_1961", "ls_3752-4944-0000", "ls_2412-153948-0000", "sphinx_goforward"
)  # fmt: skip


def _a_second_apart(clips: list[np.ndarray]) -> np.ndarray:
    pause = np.zeros(16_000, dtype=np.float32)
    return np.concatenate([part for clip in clips for part in (clip, pause)])


def _plain(text: str) -> str:
    return " ".join("".join(c for c in w.lower() if c.isalnum()) for w in text.split())


_SPIN_PROBE = """
import os, sys
if sys.argv[1] == "early":
    import ctranslate2
if sys.argv[1] == "engine":  # the engine's own way in: choosing the device loads CTranslate2
    from harken.engine.whisper import pick_device
    pick_device("auto")
from harken.engine.runtime import prepare_ctranslate2
prepare_ctranslate2()
import ctranslate2
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"))
"""


@pytest.mark.parametrize(
    ("given", "when", "expected"),
    [
        ({}, "late", "ACTIVE 300000"),  # set before CTranslate2 (libgomp) is loaded
        ({}, "engine", "ACTIVE 300000"),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, "late", "PASSIVE None"),  # the caller's own kept
        ({"GOMP_SPINCOUNT": "0"}, "late", "None 0"),
        ({}, "early", "None None"),  # too late to matter: left alone
    ],
)
def test_the_openmp_spin_is_set_before_ctranslate2_loads_unless_the_caller_chose(
    given: dict[str, str], when: str, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", _SPIN_PROBE, when],
        env={**env, **given}, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.split("\n")[-2] == expected
