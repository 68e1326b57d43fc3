"""Live transcription: OpenAI's Realtime API (transcription sessions) over a WebSocket.

The real `openai` SDK (GA `client.realtime` and the beta client) against a real `harken serve`
server, streaming the repository's clips at real-time pace (where timing matters) and faster.
Raw WebSocket clients play the misbehaving ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from harken.api.realtime import realtime_state
from harken.audio import decode_pcm16
from tests.conftest import SPEECH_DIR, Clip, RunningServer, wer
from tests.servers import TINY, run_built_server
from tests.test_metrics import scrape, value

KEY = "sk-realtime-test"
MAX_SESSIONS = 5
MAX_EVENT_MB = 0.5
IDLE_SECONDS = 4.0
SILENCE = 1.0  # seconds of digital silence before each clip


@pytest.fixture(scope="module")
def live_server(harken_home: Path) -> Iterator[RunningServer]:
    """`harken serve`'s server, keyed, tiny.en, with small live-session limits."""
    with run_built_server(
        harken_home,
        api_keys=[KEY],
        aliases={"mimo-v2.5-asr": TINY, "whisper-1": TINY},
        realtime_max_sessions=MAX_SESSIONS,
        realtime_max_event_mb=MAX_EVENT_MB,
        realtime_idle_timeout_seconds=IDLE_SECONDS,
    ) as running:
        # A first model call pays for warming up; the timing tests should not.
        clip = SPEECH_DIR / "audio" / "sphinx_goforward.flac"
        httpx.post(
            f"{running.url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {KEY}"},
            data={"model": TINY},
            files={"file": (clip.name, clip.read_bytes())},
            timeout=120,
        ).raise_for_status()
        yield running


def ws_url(server: RunningServer, query: str = "intent=transcription") -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime?" + query


def sdk(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


# --- audio as a Realtime client sends it
def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16_000
    frames = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def mu_law(samples: np.ndarray) -> bytes:
    """8 kHz G.711 µ-law bytes, encoded by PyAV (what a phone line sends)."""
    codec = av.CodecContext.create("pcm_mulaw", "w")
    codec.sample_rate, codec.layout, codec.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(
        resample(samples, 8000).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


@dataclass
class Stream:
    """A clip between stretches of silence, and where its speech is (ms into the stream)."""

    samples16: np.ndarray
    speech_start_ms: float
    speech_end_ms: float

    def pcm24(self) -> bytes:
        return resample(self.samples16, 24_000).astype("<i2").tobytes()


def padded(clips: list[Clip], gap: float = 1.5, tail: float = 1.5) -> Stream:
    silence = np.zeros(int(SILENCE * 16_000), np.int16)
    parts, cursor, first, last = [silence], SILENCE, None, 0.0
    for clip in clips:
        pcm = decode_pcm16(clip.bytes())
        start, end = speech_bounds(pcm)
        first = cursor + start if first is None else first
        last = cursor + end
        parts.append(pcm)
        cursor += pcm.shape[0] / 16_000
        pause = np.zeros(int(gap * 16_000), np.int16)
        parts.append(pause)
        cursor += gap
    parts.append(np.zeros(int(tail * 16_000), np.int16))
    return Stream(np.concatenate(parts), (first or 0.0) * 1000, last * 1000)


def speech_bounds(pcm: np.ndarray) -> tuple[float, float]:
    """Seconds where the recording's sound begins and ends: 10 ms frames within 35 dB of its
    loudest frame."""
    frames = pcm[: pcm.shape[0] // 160 * 160].astype(np.float32).reshape(-1, 160)
    level = 10 * np.log10((frames**2).mean(axis=1) + 1e-9)
    loud = np.flatnonzero(level > level.max() - 35)
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


async def send_audio(send: Any, audio: bytes, *, pace: float, chunk_seconds: float = 0.1,
                     bytes_per_second: int = 48_000) -> None:  # fmt: skip
    """Append `audio` in chunks; `pace` 1 is real time, 0 as fast as possible."""
    step = int(bytes_per_second * chunk_seconds)
    started = time.monotonic()
    for i, begin in enumerate(range(0, len(audio), step)):
        await send(base64.b64encode(audio[begin : begin + step]).decode())
        if pace:
            wait = started + (i + 1) * chunk_seconds / pace - time.monotonic()
            await asyncio.sleep(max(0.0, wait))
        else:
            await asyncio.sleep(0)


@dataclass
class Heard:
    events: list[Any] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # when each event came

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.type == kind]

    def transcript(self) -> str:
        done = self.of("conversation.item.input_audio_transcription.completed")
        return " ".join(e.transcript for e in done)

    def first(self, kind: str, item_id: str) -> float:
        """When the first event of a kind for an item came."""
        for event, when in zip(self.events, self.arrived, strict=True):
            if event.type == kind and event.item_id == item_id:
                return when
        return float("inf")

    def deltas_by_item(self) -> dict[str, str]:
        joined: dict[str, str] = {}
        for e in self.of("conversation.item.input_audio_transcription.delta"):
            joined[e.item_id] = joined.get(e.item_id, "") + e.delta
        return joined


async def listen(connection: Any, heard: Heard) -> None:
    async for event in connection:
        heard.events.append(event)
        heard.arrived.append(time.monotonic())
        assert event.type != "error", event


async def until_all_done(listener: asyncio.Task[None], heard: Heard, timeout: float = 120) -> None:
    """Once the audio is all sent: wait until every utterance that started is done (GA:
    `conversation.item.done`; the silence after the last clip stops the last utterance)."""
    deadline = time.monotonic() + timeout
    while True:
        if listener.done():
            listener.result()  # an error event fails the test here
            raise AssertionError("the session ended early")
        done = len(heard.of("conversation.item.done"))
        if done and done == len(heard.of("input_audio_buffer.speech_started")):
            listener.cancel()
            return
        assert time.monotonic() < deadline, "the transcripts did not come"
        await asyncio.sleep(0.05)


async def ga_session(server: RunningServer, stream: Stream, *, pace: float,
                     update: dict[str, Any] | None = None) -> Heard:  # fmt: skip
    """Stream over the GA SDK with server VAD until every utterance's transcript is done."""
    heard = Heard()
    session = update or {
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": TINY, "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5,
                               "prefix_padding_ms": 300, "silence_duration_ms": 500},
        }},
    }  # fmt: skip
    async with sdk(server).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session=session)

        async def append(audio: str) -> None:
            await conn.input_audio_buffer.append(audio=audio)

        listener = asyncio.create_task(listen(conn, heard))
        await send_audio(append, stream.pcm24(), pace=pace)
        await until_all_done(listener, heard)
    return heard


def file_transcript(server: RunningServer, clips: list[Clip]) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    texts = []
    for clip in clips:
        result = client.audio.transcriptions.create(
            model=TINY, file=(clip.path.name, clip.bytes()), language="en"
        )
        texts.append(result.text)
    return " ".join(texts)


# --- the GA SDK, real time: events, timing, deltas
def test_ga_sdk_at_real_time_pace(live_server: RunningServer, speech: dict[str, Clip]) -> None:
    clip = speech["ls_1995-1837-0001"]  # 8.7 s without a pause: time for text while it is spoken
    stream = padded([clip])
    heard = asyncio.run(ga_session(live_server, stream, pace=1.0))

    created = heard.of("session.created")[0]
    assert created.session.type == "transcription"
    assert heard.of("session.updated")[0].session.audio.input.transcription.model == TINY
    started = heard.of("input_audio_buffer.speech_started")
    stopped = heard.of("input_audio_buffer.speech_stopped")
    assert started and stopped, [e.type for e in heard.events]
    # Within 300 ms of where the clip's speech starts and ends.
    assert abs(started[0].audio_start_ms - stream.speech_start_ms) <= 300, started[0]
    assert abs(stopped[-1].audio_end_ms - stream.speech_end_ms) <= 300, stopped[-1]

    committed = heard.of("input_audio_buffer.committed")
    added = heard.of("conversation.item.added")
    assert [e.item_id for e in committed] == [e.item.id for e in added]
    assert started[0].item_id == committed[0].item_id
    completed = heard.of("conversation.item.input_audio_transcription.completed")
    assert completed[0].usage.type == "duration" and completed[0].usage.seconds > 0
    done = heard.of("conversation.item.done")
    assert done and done[0].item.content[0].transcript == completed[0].transcript

    # Text arrives while the person is still speaking, and the deltas join to the transcript.
    delta_kind = "conversation.item.input_audio_transcription.delta"
    assert any(
        heard.first(delta_kind, e.item_id)
        < heard.first("input_audio_buffer.speech_stopped", e.item_id)
        for e in started
    ), "\n".join(f"{t:.2f} {e.type}" for e, t in zip(heard.events, heard.arrived, strict=True))
    deltas = heard.deltas_by_item()
    for event in completed:
        assert deltas.get(event.item_id, "") == event.transcript
    assert (
        wer(clip.text, heard.transcript())
        <= wer(clip.text, file_transcript(live_server, [clip])) + 0.01
    )


def test_ga_sdk_faster_than_real_time_matches_the_file_endpoint(
    live_server: RunningServer, speech: dict[str, Clip]
) -> None:
    """Several clips in one session, at 4× real time: utterance by utterance, completed
    transcripts read as well as the file endpoint's (WER at most 1 point higher)."""
    ids = ["ls_1089-134691-0001", "ls_3752-4944-0000", "librivox_sns01_0890", "ls_2412-153948-0002",
           "ls_1272-128104-0000", "librivox_sns01_0930"]  # fmt: skip
    clips = [speech[i] for i in ids]
    stream = padded(clips, gap=1.5)

    update = {"type": "transcription", "audio": {"input": {
        "transcription": {"model": TINY, "language": "en"}}}}  # fmt: skip
    heard = asyncio.run(ga_session(live_server, stream, pace=4.0, update=update))
    assert len(heard.of("input_audio_buffer.committed")) >= len(clips)
    reference = " ".join(c.text for c in clips)
    live = wer(reference, heard.transcript())
    files = wer(reference, file_transcript(live_server, clips))
    assert live <= files + 0.01, (live, files, heard.transcript())
    deltas = heard.deltas_by_item()
    for event in heard.of("conversation.item.input_audio_transcription.completed"):
        assert deltas.get(event.item_id, "") == event.transcript
    # Item ids chain: each committed item names the one before.
    committed = heard.of("input_audio_buffer.committed")
    for before, after in itertools.pairwise(committed):
        assert after.previous_item_id == before.item_id


# --- the beta client, G.711 µ-law, and manual commits
def test_beta_client_with_mu_law(live_server: RunningServer, speech: dict[str, Clip]) -> None:
    clip = speech["librivox_sns01_0870"]
    stream = padded([clip])
    audio = mu_law(stream.samples16)

    async def run() -> list[Any]:
        events: list[Any] = []
        # The beta client derives a wss:// URL from the base URL unless told the WebSocket's.
        client = sdk(live_server)
        client.websocket_base_url = live_server.url.replace("http://", "ws://") + "/v1"
        async with client.beta.realtime.connect(
            model="anything-at-all", extra_query={"intent": "transcription"}
        ) as conn:
            await conn.transcription_session.update(session={
                "input_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": TINY, "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            })  # fmt: skip

            async def append(data: str) -> None:
                await conn.input_audio_buffer.append(audio=data)

            sender = asyncio.create_task(send_audio(append, audio, pace=4.0, bytes_per_second=8000))
            async for event in conn:
                events.append(event)
                assert event.type != "error", event
                if event.type.endswith("input_audio_transcription.completed"):
                    break
            await sender
        return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    assert kinds[0] == "transcription_session.created"
    assert "transcription_session.updated" in kinds
    updated = events[kinds.index("transcription_session.updated")]
    assert updated.session.input_audio_format == "g711_ulaw"
    assert "conversation.item.created" in kinds and "conversation.item.added" not in kinds
    completed = events[-1]
    assert wer(clip.text, completed.transcript) <= 0.25, completed.transcript


def test_manual_commit(live_server: RunningServer, speech: dict[str, Clip]) -> None:
    """`turn_detection: null`: nothing happens until the client commits; then the buffer is
    transcribed (text streamed as deltas, word log probabilities when asked for), and an empty
    commit is an error event."""
    clip = speech["ls_2412-153948-0001"]
    pcm = resample(decode_pcm16(clip.bytes()), 24_000).astype("<i2").tobytes()

    async def run() -> tuple[list[Any], list[Any]]:
        before: list[Any] = []
        after: list[Any] = []
        async with sdk(live_server).realtime.connect(extra_query={"intent": "transcription"}) as c:
            await c.session.update(session={"type": "transcription", "audio": {"input": {
                "transcription": {"model": TINY}, "turn_detection": None}},
                "include": ["item.input_audio_transcription.logprobs"]})  # fmt: skip
            await append_all(c, pcm)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(_collect(c, before, "never"), 1.5)
            await c.input_audio_buffer.commit(event_id="evt_commit_1")
            await asyncio.wait_for(
                _collect(c, after, "conversation.item.input_audio_transcription.completed"), 60
            )
            await c.input_audio_buffer.commit(event_id="evt_commit_2")
            await asyncio.wait_for(_collect(c, after, "error"), 10)
        return before, after

    before, after = asyncio.run(run())
    assert [e.type for e in before] == ["session.created", "session.updated"]
    kinds = [e.type for e in after]
    assert "input_audio_buffer.speech_started" not in kinds
    assert kinds[0] == "input_audio_buffer.committed"
    completed = next(e for e in after if e.type.endswith("transcription.completed"))
    deltas = "".join(e.delta for e in after if e.type.endswith("transcription.delta"))
    assert deltas == completed.transcript
    assert wer(clip.text, completed.transcript) <= 0.15, completed.transcript
    tokens = [p.token for p in completed.logprobs]
    assert "".join(tokens).strip() == completed.transcript.strip()
    assert all(p.logprob <= 0 for p in completed.logprobs)
    error = after[-1].error
    assert error.code == "input_audio_buffer_commit_empty" and error.event_id == "evt_commit_2"


def test_a_commit_without_speech_gives_an_empty_transcript(live_server: RunningServer) -> None:
    """Committed audio in which VAD finds no speech (30 s of digital silence, where Whisper
    writes "You"; white noise) is transcribed as nothing: no delta, an empty transcript."""
    rng = np.random.default_rng(5)
    buffers = {
        "silence": np.zeros(30 * 24_000, np.int16),
        "noise": rng.normal(0, 3000, 5 * 24_000).clip(-32768, 32767).astype(np.int16),
    }

    async def run(pcm: bytes) -> list[Any]:
        events: list[Any] = []
        async with sdk(live_server).realtime.connect(extra_query={"intent": "transcription"}) as c:
            await c.session.update(session={"type": "transcription", "audio": {"input": {
                "transcription": {"model": TINY}, "turn_detection": None}}})  # fmt: skip
            await append_all(c, pcm)
            await c.input_audio_buffer.commit()
            await asyncio.wait_for(
                _collect(c, events, "conversation.item.input_audio_transcription.completed"), 60
            )
        return events

    for name, samples in buffers.items():
        events = asyncio.run(run(samples.astype("<i2").tobytes()))
        assert not [e for e in events if e.type.endswith("transcription.delta")], (name, events)
        assert events[-1].transcript == "", (name, events[-1])


async def append_all(connection: Any, pcm: bytes) -> None:
    """The whole buffer in `input_audio_buffer.append` events of 2 s (at 24 kHz), at once."""
    for begin in range(0, len(pcm), 96_000):
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(pcm[begin : begin + 96_000]).decode()
        )


async def _collect(connection: Any, into: list[Any], until: str) -> None:
    async for event in connection:
        into.append(event)
        if event.type == until:
            return


# --- load: sessions next to file requests
def test_four_sessions_next_to_file_requests(
    live_server: RunningServer, speech: dict[str, Clip]
) -> None:
    ids = ["ls_1089-134691-0001", "ls_1988-24833-0002", "ls_3752-4944-0001", "librivox_sns01_0920"]
    file_clip = speech["ls_1272-128104-0000"]

    async def files() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:
            statuses = []
            for _ in range(3):
                response = await client.post(
                    f"{live_server.url}/v1/audio/transcriptions",
                    headers={"Authorization": f"Bearer {KEY}"},
                    data={"model": TINY},
                    files={"file": (file_clip.path.name, file_clip.bytes())},
                )
                statuses.append(response.status_code)
            return statuses

    async def run() -> tuple[list[Heard], list[int]]:
        sessions = [ga_session(live_server, padded([speech[i]]), pace=2.0) for i in ids]
        *heard, statuses = await asyncio.gather(*sessions, files())
        return heard, statuses

    heard, statuses = asyncio.run(run())
    assert statuses == [200, 200, 200]
    for clip_id, one in zip(ids, heard, strict=True):
        assert wer(speech[clip_id].text, one.transcript()) <= 0.3, (clip_id, one.transcript())
        deltas = one.deltas_by_item()
        for event in one.of("conversation.item.input_audio_transcription.completed"):
            assert deltas.get(event.item_id, "") == event.transcript


# --- what a bad client gets
@pytest.fixture
def raw(live_server: RunningServer) -> Any:
    """Opens a raw WebSocket session (with the key) and returns it after `session.created`."""

    @contextlib.asynccontextmanager
    async def opened(**kwargs: Any) -> AsyncIterator[Any]:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with ws_connect(ws_url(live_server), additional_headers=headers, **kwargs) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            yield ws

    return opened


async def next_event(ws: Any, kind: str | None = None, timeout: float = 20) -> dict[str, Any]:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if kind is None or event["type"] == kind:
            return event


def check_error_event(event: dict[str, Any], code: str | None, event_id: str | None) -> None:
    assert event["type"] == "error", event
    error = event["error"]
    assert set(error) == {"message", "type", "param", "code", "event_id"}, error
    assert error["message"] and "Traceback" not in error["message"]
    assert error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code, error
    assert error["event_id"] == event_id


def test_bad_events_get_error_events_and_the_session_goes_on(raw: Any) -> None:
    async def run() -> None:
        async with raw() as ws:
            bad: list[tuple[Any, str | None, str | None]] = [
                ("{not json", "invalid_json", None),
                (json.dumps([1, 2]), "invalid_json", None),
                (json.dumps({"event_id": "e1"}), "invalid_event", "e1"),
                (json.dumps({"type": "response.create", "event_id": "e2"}), "invalid_event", "e2"),
                (
                    json.dumps(
                        {
                            "type": "input_audio_buffer.append",
                            "event_id": "e3",
                            "audio": "@@not base64@@",
                        }
                    ),
                    "invalid_audio",
                    "e3",
                ),
                (json.dumps({"type": "input_audio_buffer.append", "event_id": "e4"}), None, "e4"),
                # A wrong audio format, a wrong rate, an unknown model, a conversation session.
                (
                    json.dumps(
                        {
                            "type": "session.update",
                            "event_id": "e5",
                            "session": {
                                "type": "transcription",
                                "audio": {"input": {"format": {"type": "audio/wav"}}},
                            },
                        }
                    ),
                    None,
                    "e5",
                ),
                (
                    json.dumps(
                        {
                            "type": "session.update",
                            "event_id": "e6",
                            "session": {
                                "type": "transcription",
                                "audio": {
                                    "input": {"format": {"type": "audio/pcm", "rate": 44100}}
                                },
                            },
                        }
                    ),
                    None,
                    "e6",
                ),
                (
                    json.dumps(
                        {
                            "type": "session.update",
                            "event_id": "e7",
                            "session": {
                                "type": "transcription",
                                "audio": {"input": {"transcription": {"model": "no-such-model"}}},
                            },
                        }
                    ),
                    "model_not_found",
                    "e7",
                ),
                (
                    json.dumps(
                        {
                            "type": "session.update",
                            "event_id": "e8",
                            "session": {"type": "realtime"},
                        }
                    ),
                    "invalid_value",
                    "e8",
                ),
                (
                    json.dumps(
                        {
                            "type": "transcription_session.update",
                            "event_id": "e9",
                            "session": {"input_audio_format": "mp3"},
                        }
                    ),
                    None,
                    "e9",
                ),
            ]
            for message, code, event_id in bad:
                await ws.send(message)
                check_error_event(await next_event(ws), code, event_id)
            # Still the same session, and it still works.
            await ws.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "type": "transcription",
                            "audio": {"input": {"format": {"type": "audio/pcmu"}}},
                        },
                    }
                )
            )
            updated = await next_event(ws)
            assert updated["type"] == "session.updated", updated
            assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}

    asyncio.run(run())


def test_oversize_appends(raw: Any) -> None:
    """An append over the event limit gets an error event and the session goes on; one far over
    it closes the socket (1009) before the server holds it all."""
    limit = int(MAX_EVENT_MB * 1024 * 1024)

    async def run() -> None:
        async with raw(max_size=None) as ws:
            audio = base64.b64encode(bytes(limit)).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            check_error_event(await next_event(ws), "event_too_large", None)
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert (await next_event(ws))["type"] == "input_audio_buffer.cleared"

            huge = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (4 * limit)})
            await ws.send(huge)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await next_event(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    asyncio.run(run())


def test_a_client_that_vanishes_mid_utterance_frees_everything(
    live_server: RunningServer, raw: Any, speech: dict[str, Clip]
) -> None:
    stream = padded([speech["ls_1995-1837-0001"]])
    half = stream.pcm24()[: int(48_000 * (SILENCE + 4.0))]
    before = scrape(live_server.url, headers={"Authorization": f"Bearer {KEY}"})

    async def run() -> None:
        async with raw() as ws:

            async def append(audio: str) -> None:
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

            await send_audio(append, half, pace=4.0)
            await next_event(ws, "input_audio_buffer.speech_started")
            ws.transport.abort()  # no close frame: the client is simply gone

    asyncio.run(run())
    deadline = time.monotonic() + 10
    while True:
        after = scrape(live_server.url, headers={"Authorization": f"Bearer {KEY}"})
        ended = value(after, "harken_realtime_sessions_ended_total", reason="client_gone")
        gone = ended - value(before, "harken_realtime_sessions_ended_total", reason="client_gone")
        if gone >= 1 and value(after, "harken_realtime_sessions_active") == 0:
            break
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.2)
    assert live_server.service.scheduler.admitted == 0 or _settles(live_server)
    assert realtime_state(live_server.app).partial_slots.taken == 0


def _settles(server: RunningServer) -> bool:
    deadline = time.monotonic() + 10
    while server.service.scheduler.admitted and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.service.scheduler.admitted == 0


# --- limits and keys
def test_limits_close_with_1008(live_server: RunningServer, raw: Any) -> None:
    async def run() -> None:
        async with contextlib.AsyncExitStack() as stack:
            opened = [await stack.enter_async_context(raw()) for _ in range(MAX_SESSIONS)]
            headers = {"Authorization": f"Bearer {KEY}"}
            async with ws_connect(ws_url(live_server), additional_headers=headers) as extra:
                check_error_event_type(await next_event(extra), "too_many_sessions")
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await next_event(extra)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            # An idle session (no event for IDLE_SECONDS) is closed the same way.
            error = await next_event(opened[0], timeout=IDLE_SECONDS + 5)
            assert error["error"]["code"] == "idle_timeout"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await next_event(opened[0])
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    asyncio.run(run())


def check_error_event_type(event: dict[str, Any], code: str) -> None:
    assert event["type"] == "error" and event["error"]["code"] == code, event


def test_keys_headers_subprotocol_and_client_secrets(live_server: RunningServer) -> None:
    async def run() -> None:
        # No key, a wrong key: the handshake is refused with the contract's 401 body.
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with ws_connect(ws_url(live_server), additional_headers=headers):
                    pass
            response = refused.value.response
            assert response.status_code == 401
            assert json.loads(response.body)["error"]["code"] == "invalid_api_key"
        # A browser: the key in OpenAI's subprotocol; the server answers with "realtime".
        protocols = ["realtime", f"openai-insecure-api-key.{KEY}"]
        async with ws_connect(ws_url(live_server), subprotocols=protocols) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"
        # A client secret, made with the key, opens a session without it.
        secret = httpx.post(
            f"{live_server.url}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {KEY}"},
            json={
                "expires_after": {"anchor": "created_at", "seconds": 60},
                "session": {"type": "transcription"},
            },
        ).json()
        assert secret["value"].startswith("ek_") and secret["expires_at"] > time.time()
        protocols = ["realtime", f"openai-insecure-api-key.{secret['value']}"]
        async with ws_connect(ws_url(live_server), subprotocols=protocols) as ws:  # type: ignore[arg-type]
            assert json.loads(await ws.recv())["type"] == "session.created"
        # It opens realtime sessions only.
        models = httpx.get(
            f"{live_server.url}/v1/models",
            headers={"Authorization": f"Bearer {secret['value']}"},
        )
        assert models.status_code == 401
        # Another intent than transcription is refused at the handshake.
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with ws_connect(
                ws_url(live_server, "intent=conversation"),
                additional_headers={"Authorization": f"Bearer {KEY}"},
            ):
                pass
        assert refused.value.response.status_code == 400

    asyncio.run(run())


def test_an_utterance_over_30_seconds_is_cut_at_a_pause(
    live_server: RunningServer, speech: dict[str, Clip]
) -> None:
    """With a long `silence_duration_ms`, clips with short pauses between them are one
    utterance past Whisper's 30 s window: it is cut into items of at most 30 s, and no passage
    is lost at the cuts."""
    ids = ["ls_2412-153948-0000", "ls_2412-153948-0001", "ls_1089-134686-0000",
           "ls_1272-128104-0000"]  # fmt: skip
    clips = [speech[i] for i in ids]
    stream = padded(clips, gap=0.6, tail=3.0)
    update = {"type": "transcription", "audio": {"input": {
        "transcription": {"model": TINY, "language": "en"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 2000}}}}  # fmt: skip
    heard = asyncio.run(ga_session(live_server, stream, pace=8.0, update=update))
    completed = heard.of("conversation.item.input_audio_transcription.completed")
    assert len(completed) >= 2, [e.transcript for e in completed]
    assert all(e.usage.seconds <= 30 for e in completed), [e.usage.seconds for e in completed]
    reference = " ".join(c.text for c in clips)
    assert wer(reference, heard.transcript()) <= 0.15, heard.transcript()


def test_the_session_prompt_reaches_the_decoder(
    live_server: RunningServer, speech: dict[str, Clip]
) -> None:
    """A prompt with an odd spelling of the clip's name: the transcript takes it (without the
    prompt, tiny.en writes "Captain Freer" or "Frere"), in the partial text and in the final one.
    (The prompt's "Kaptain" is the final's but not always the partial drafts', which may send
    "Captain" first.)"""
    clip = speech["ls_3752-4944-0000"]  # "Captain Frere says that the scenery is delightful"
    transcription = {"model": TINY, "language": "en", "prompt": "Kaptain Frair says."}
    update = {"type": "transcription", "audio": {"input": {"transcription": transcription}}}
    heard = asyncio.run(ga_session(live_server, padded([clip]), pace=4.0, update=update))
    assert "aptain Frair says" in heard.transcript(), heard.transcript()
    deltas = heard.deltas_by_item()
    for event in heard.of("conversation.item.input_audio_transcription.completed"):
        assert deltas.get(event.item_id, "") == event.transcript


def test_a_session_ends_at_its_length_limit(harken_home: Path) -> None:
    """Past `realtime_max_session_seconds` a session that still streams gets an `error` event
    and close code 1008, and the metrics count it as ended."""
    limit = 2.0
    with run_built_server(harken_home, realtime_max_session_seconds=limit) as short:
        before = value(
            scrape(short.url), "harken_realtime_sessions_ended_total", reason="session_too_long"
        )

        async def run() -> float:
            async with ws_connect(ws_url(short)) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
                began = time.monotonic()

                async def talk() -> None:  # silence, so the session is never idle
                    silence = base64.b64encode(bytes(4800)).decode()
                    append = json.dumps({"type": "input_audio_buffer.append", "audio": silence})
                    with contextlib.suppress(websockets.ConnectionClosed):
                        while True:
                            await ws.send(append)
                            await asyncio.sleep(0.1)

                talker = asyncio.create_task(talk())
                try:
                    check_error_event_type(await next_event(ws, "error"), "session_expired")
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await next_event(ws)
                finally:
                    talker.cancel()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
                return time.monotonic() - began

        lasted = asyncio.run(run())
        assert limit - 0.5 <= lasted <= limit + 3, lasted
        deadline = time.monotonic() + 10
        while True:
            samples = scrape(short.url)
            ended = value(
                samples, "harken_realtime_sessions_ended_total", reason="session_too_long"
            )
            if ended - before == 1 and value(samples, "harken_realtime_sessions_active") == 0:
                break
            assert time.monotonic() < deadline, "the session was not counted as ended"
            time.sleep(0.2)


@pytest.mark.parametrize(
    ("sent", "decode", "after"),
    [
        ("He was not an", "He was not an ill-disposed young man.", "ill-disposed young man."),
        # A sent word read differently later stands for one word, not for the sentence's
        # last word of the same spelling (it once dropped "country can do for").
        ("What you", "What your country can do for you!", "country can do for you!"),
        ("and so my", "And so, my fellow Americans.", "fellow Americans."),
        ("Mr Quilter is", "Mister Quilter is the apostle", "the apostle"),
        ("a b c d", "a b", ""),
        ("", "Hello there.", "Hello there."),
    ],
)
def test_the_words_after_the_sent_ones(sent: str, decode: str, after: str) -> None:
    from harken.service.live import _after, _words

    assert "".join(_after(_words(sent), _words(decode))).strip() == after


@pytest.mark.parametrize(
    ("decode", "kept"),
    [
        ("Captain Frair. Captain Frair. Captain Frair. Captain", "Captain Frair."),
        ("He said that the scene... He said that the scene... He", "He said that the scene..."),
        ("no no no, I said", "no no no, I said"),
        ("He was not an ill-disposed young man.", "He was not an ill-disposed young man."),
    ],
)
def test_a_looping_partial_decode_is_cut_where_it_repeats(decode: str, kept: str) -> None:
    from harken.service.live import _before_repeat, _words

    assert "".join(_before_repeat(_words(decode))).strip() == kept


def test_mandarin_is_sent_while_spoken_in_simplified_characters(
    live_server: RunningServer, speech: dict[str, Clip]
) -> None:
    """Mandarin read live by whisper-base: with no spaces to agree on, each character counts
    as a word, so text still comes while the speaker talks; deltas and transcripts are in
    Simplified characters (as the file endpoint answers), and the deltas join to them.

    Sent at half real-time pace: three drafts must agree before words are sent, and on a slow
    2-core machine a whisper-base draft takes 0.7-1.2 s, so at real time a 4-second clip can
    end before they do. How soon words come at real time is measured by
    `benchmarks/realtime.py` (README), not here."""
    from harken.engine.script import convert_text

    clips = [speech["aishell1_BAC009S0724W0121"], speech["aishell1_BAC009S0764W0122"]]
    update = {"type": "transcription", "audio": {"input": {
        "transcription": {"model": "whisper-base", "language": "zh"}}}}  # fmt: skip
    heard = asyncio.run(ga_session(live_server, padded(clips), pace=0.5, update=update))
    completed = heard.of("conversation.item.input_audio_transcription.completed")
    assert len(completed) >= len(clips), heard.transcript()
    deltas = heard.deltas_by_item()
    for event in completed:
        assert deltas.get(event.item_id, "") == event.transcript
    text = heard.transcript()
    assert "广州市" in text, text  # whisper-base alone sometimes writes 廣州市
    assert convert_text(text, "simplified") == text, text
    assert any(
        heard.first("conversation.item.input_audio_transcription.delta", e.item_id)
        < heard.first("input_audio_buffer.speech_stopped", e.item_id)
        for e in completed
    ), "no text while the speaker talked"


def test_the_final_is_read_while_the_silence_goes_on(
    live_server: RunningServer, speech: dict[str, Clip]
) -> None:
    """At real time with the server idle, an utterance's final is started 200 ms into the
    silence that ends it and used once the silence is long enough (`silence_duration_ms`);
    the transcript is still the whole utterance's, and the deltas join to it."""
    auth = {"Authorization": f"Bearer {KEY}"}
    used = value(scrape(live_server.url, headers=auth), "harken_realtime_read_ahead_total",
                 outcome="used")  # fmt: skip
    clip = speech["ls_1995-1837-0001"]
    heard = asyncio.run(ga_session(live_server, padded([clip]), pace=1.0))
    after = value(scrape(live_server.url, headers=auth), "harken_realtime_read_ahead_total",
                  outcome="used")  # fmt: skip
    assert after >= used + 1, (used, after)
    completed = heard.of("conversation.item.input_audio_transcription.completed")
    deltas = heard.deltas_by_item()
    for event in completed:
        assert deltas.get(event.item_id, "") == event.transcript
    file = wer(clip.text, file_transcript(live_server, [clip]))
    assert wer(clip.text, heard.transcript()) <= file + 0.01, heard.transcript()
