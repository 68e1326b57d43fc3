"""Many users at once: cross-request batching without mixing, backpressure, fairness to short
requests, the per-request deadline. Real models (tiny.en), real speech, the real server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harken.audio import decode_audio
from harken.catalog import packaged_tiny_en
from harken.config import Settings
from harken.engine import TranscriptionOptions
from harken.engine.whisper import FasterWhisperTranscriber
from tests.conftest import run_server, wer

TINY = "whisper-tiny.en"
# Different speakers, lengths and words: a row routed to the wrong request would show.
MIXED_CLIPS = [
    "jfk_inaugural_1961",
    "ls_1089-134686-0000",
    "ls_2412-153948-0000",
    "ls_3752-4944-0002",
    "ls_1988-24833-0003",
    "librivox_sns01_0870",
    "sphinx_goforward",
    "ls_1272-128104-0000",
]
LONG = "librivox_shakespeare_sonnets_1-3"


def chat(clip: Any, model: str = TINY) -> dict[str, Any]:
    part = {"type": "input_audio", "input_audio": {"data": clip.data_url()}}
    return {"model": model, "messages": [{"role": "user", "content": [part]}]}


def post(url: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600, **kwargs)


def text_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# --- the batcher itself, against the raw engine
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    weights = packaged_tiny_en(Settings(home=tmp_path_factory.mktemp("home")))
    raw = FasterWhisperTranscriber("raw", weights, device="cpu", cpu_threads=2, batch_size=1)
    batched = FasterWhisperTranscriber(  # two workers (a setting), batches of 8
        "batched", weights, device="cpu", cpu_threads=2, batch_size=8, max_concurrency=2
    )
    assert raw.batcher is None and batched.batcher is not None
    return raw, batched


def transcript(transcriber: Any, audio: np.ndarray) -> str:
    result = transcriber.transcribe(audio, TranscriptionOptions(language="en"))
    return "".join(segment.text for segment in result.segments).strip()


def test_batched_windows_give_each_request_the_raw_engines_transcript(tiny_models, speech):
    raw, batched = tiny_models
    clips = [speech[name] for name in MIXED_CLIPS]
    audios = [decode_audio(clip.bytes()) for clip in clips]
    expected = [transcript(raw, audio) for audio in audios]

    before = sum(n for (_, size), n in batched.batcher.stats.batches.items() if size > 1)
    gate = threading.Barrier(len(audios))

    def run(audio: np.ndarray) -> str:
        gate.wait()
        return transcript(batched, audio)

    with ThreadPoolExecutor(len(audios)) as pool:
        got = list(pool.map(run, audios))

    shared = sum(n for (_, size), n in batched.batcher.stats.batches.items() if size > 1)
    assert shared > before, "no model call was shared between requests"
    for clip, want, have in zip(clips, expected, got, strict=True):
        # Batching changes only the order of float additions: the words are the raw engine's.
        assert wer(want, have) <= 0.02, (clip.id, want, have)
        assert wer(clip.text, have) <= wer(clip.text, want) + 0.02, clip.id


# --- the server
def test_concurrent_requests_each_get_their_own_transcript(server, speech):
    clips = [speech[name] for name in MIXED_CLIPS]
    gate = threading.Barrier(len(clips))

    def send(clip: Any) -> str:
        body = chat(clip)
        gate.wait()
        return text_of(post(server.url, body))

    with ThreadPoolExecutor(len(clips)) as pool:
        texts = list(pool.map(send, clips))

    for clip, text in zip(clips, texts, strict=True):
        own = wer(clip.text, text)
        assert own <= 0.35, (clip.id, text)
        others = [wer(other.text, text) for other in clips if other is not clip]
        assert own < min(others), f"{clip.id} got another request's words: {text!r}"


def test_a_short_request_is_not_stuck_behind_a_long_file(server, speech):
    long_clip, short_clip = speech[LONG], speech["ls_3752-4944-0002"]
    scheduler = server.service.scheduler
    finished: dict[str, float] = {}
    texts: dict[str, str] = {}

    def send(name: str, clip: Any) -> None:
        texts[name] = text_of(post(server.url, chat(clip)))
        finished[name] = time.monotonic()

    started = time.monotonic()
    long_thread = threading.Thread(target=send, args=("long", long_clip))
    long_thread.start()
    wait_until(lambda: scheduler.running >= 1)
    short_started = time.monotonic()
    send("short", short_clip)
    long_thread.join()

    assert wer(short_clip.text, texts["short"]) <= 0.2, texts["short"]
    assert wer(long_clip.text, texts["long"]) <= 0.5
    short_latency = finished["short"] - short_started
    long_latency = finished["long"] - started
    assert finished["short"] < finished["long"]
    assert short_latency < long_latency / 3, (short_latency, long_latency)


def test_overflow_gets_429_at_once_and_the_admitted_request_succeeds(
    harken_home: Path, speech, assert_error
):
    long_clip, short_clip = speech["ls_1272-128104-0004_8k"], speech["sphinx_goforward"]
    with run_server(
        harken_home, workers=1, max_active=1, max_queue=0,
        default_model=TINY, preload=[TINY],
    ) as running:  # fmt: skip
        scheduler = running.service.scheduler
        assert scheduler.capacity == 1
        result: dict[str, httpx.Response] = {}
        admitted = threading.Thread(
            target=lambda: result.setdefault("long", post(running.url, chat(long_clip)))
        )
        admitted.start()
        wait_until(lambda: scheduler.admitted >= 1)

        refused = []
        for _ in range(3):
            sent = time.monotonic()
            response = post(running.url, chat(short_clip))
            refused.append((response, time.monotonic() - sent))
        for response, elapsed in refused:
            assert_error(response, 429, "rate_limit_exceeded")
            assert response.json()["error"]["type"] == "rate_limit_error"
            assert int(response.headers["retry-after"]) >= 1
            assert elapsed < 2.0, "a full queue must answer at once"

        admitted.join()
        assert wer(long_clip.text, text_of(result["long"])) <= 0.35
        # A place is free again: the next request goes through.
        wait_until(lambda: scheduler.admitted == 0)
        assert wer(short_clip.text, text_of(post(running.url, chat(short_clip)))) <= 0.25


def test_a_request_past_its_deadline_is_stopped_with_504(harken_home: Path, speech, assert_error):
    with run_server(
        harken_home, request_timeout_seconds=0.5, default_model=TINY, preload=[TINY]
    ) as running:
        response = post(running.url, chat(speech[LONG]))
        error = assert_error(response, 504, "deadline_exceeded")
        assert "0.5 s" in error["message"]
        # The job gives its place back instead of decoding on for nobody.
        wait_until(lambda: running.service.scheduler.admitted == 0, timeout=30)
