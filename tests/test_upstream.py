"""Models served by an upstream: a second, real harken server (tiny.en) stands for MiMo's API and
for an OpenAI-compatible one, and a small fault-injecting app for an upstream that misbehaves.

The front server has five upstream models: `up-mimo` (mimo-chat), `up-audio` (openai-audio)
and `up-chat` (openai-chat) call the real upstream, whose payload and upload limits are lowered
to 0.5 MB, as are the front's body caps for it; so a two-minute recording must go in many
pieces (the same code path as 40 minutes under MiMo's 10 MB cap, which is too slow to decode in
the suite). `up-faulty` and `up-slow` call the fault app, which answers each request as a
script says.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from harken.api import create_app
from harken.audio import SAMPLE_RATE
from harken.config import Settings
from tests.conftest import (
    Clip,
    RunningServer,
    free_port,
    normalize_text,
    run_server,
    serving_in_thread,
    wav_bytes,
    wer,
)
from tests.test_long_audio import join_clips

MODEL = "whisper-tiny.en"
UPSTREAM_KEY = "sk-upstream-secret-5f1c9a"
FRONT_KEY = "sk-front-key-81d2e4"
KEY_ENV = "HARKEN_TEST_UPSTREAM_KEY"
CAP_MB = 0.5


# --- the fault-injecting upstream
@dataclass
class FaultApp:
    """An ASGI app that answers POSTs as `script` says, one entry per request (then "ok"):
    `ok`, `429` (Retry-After: 1), `500`, `503-long` (Retry-After: 1000), `garbage` (200 with
    no JSON), `hang` (never answers), `close` (dies mid-body), `400` (quoting the key)."""

    script: list[str] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "GET":
            await self._send(send, 200, b"ok")
            return
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(headers)
        action = self.script.pop(0) if self.script else "ok"
        if action == "ok":
            answer = {"choices": [{"message": {"content": "fault free"}}]}
            await self._send(send, 200, json.dumps(answer).encode())
        elif action == "429":
            await self._send(send, 429, b'{"error": {"message": "slow down"}}', retry_after="1")
        elif action == "500":
            await self._send(send, 500, b"internal trouble")
        elif action == "503-long":
            await self._send(send, 503, b"maintenance", retry_after="1000")
        elif action == "garbage":
            await self._send(send, 200, b"<html>not json</html>")
        elif action == "400":
            message = f"Incorrect API key provided: {headers.get('authorization', '')}"
            await self._send(send, 400, json.dumps({"error": {"message": message}}).encode())
        elif action == "hang":
            if (await receive())["type"] == "http.disconnect":
                self.disconnects.append(time.monotonic())
        elif action == "close":
            await send(
                {"type": "http.response.start", "status": 200,
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"200")]}
            )  # fmt: skip
            await send({"type": "http.response.body", "body": b'{"choi', "more_body": True})
            raise RuntimeError("the fault app drops the connection mid-body")

    @staticmethod
    async def _send(send: Any, status: int, body: bytes, retry_after: str | None = None) -> None:
        headers = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def fault() -> Iterator[tuple[FaultApp, str]]:
    app = FaultApp()
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical")
    url = f"http://127.0.0.1:{port}"
    with serving_in_thread(uvicorn.Server(config), url, Settings(), app):
        yield app, url


# --- the real upstream, and the front server that calls it
@pytest.fixture(scope="module")
def upstream(harken_home: Path) -> Iterator[RunningServer]:
    with run_server(
        harken_home, api_keys=[UPSTREAM_KEY], default_model=MODEL, preload=[MODEL],
        max_payload_mb=CAP_MB, max_upload_mb=CAP_MB,
    ) as running:  # fmt: skip
        yield running


def upstream_models(upstream_url: str, fault_url: str) -> dict[str, dict[str, Any]]:
    common = {"upstream_model": MODEL, "api_key_env": KEY_ENV, "max_body_mb": CAP_MB}
    faulty = {
        "upstream": f"{fault_url}/v1", "dialect": "mimo-chat", "api_key_env": KEY_ENV,
        "retries": 2, "retry_backoff_seconds": 0.05, "timeout_seconds": 1.0,
        "max_retry_wait_seconds": 5.0,
    }  # fmt: skip
    return {
        "up-mimo": {"upstream": f"{upstream_url}/v1", "dialect": "mimo-chat", **common},
        "up-audio": {"upstream": f"{upstream_url}/v1", "dialect": "openai-audio", **common},
        "up-chat": {"upstream": f"{upstream_url}/v1", "dialect": "openai-chat", **common},
        "up-faulty": faulty,
        "up-slow": {**faulty, "timeout_seconds": 60.0, "retries": 0, "concurrency": 1},
    }


@pytest.fixture(scope="module")
def front(
    harken_home: Path, upstream: RunningServer, fault: tuple[FaultApp, str]
) -> Iterator[RunningServer]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, UPSTREAM_KEY)
        with run_server(
            harken_home, api_keys=[FRONT_KEY], default_model="up-mimo", preload=["up-mimo"],
            models=upstream_models(upstream.url, fault[1]),
        ) as running:  # fmt: skip
            yield running


def chat(url: str, key: str, model: str, data_url: str, **extra: Any) -> httpx.Response:
    content = [{"type": "input_audio", "input_audio": {"data": data_url}}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={"api-key": key}, timeout=300
    )


def transcribe(url: str, key: str, model: str, audio: bytes, **form: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("audio.flac", audio)},
        data={"model": model, **form},
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )


def front_metrics(front: RunningServer) -> str:
    response = httpx.get(f"{front.url}/metrics", headers={"api-key": FRONT_KEY})
    assert response.status_code == 200, response.text
    return response.text


def chat_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


# --- the same text as asking the upstream directly
@pytest.mark.parametrize("model", ["up-mimo", "up-audio", "up-chat"])
def test_both_dialects_give_the_upstreams_own_text(
    front: RunningServer, upstream: RunningServer, speech: dict[str, Clip], model: str
) -> None:
    import openai

    clip = speech["jfk_inaugural_1961"]
    direct = chat_text(chat(upstream.url, UPSTREAM_KEY, MODEL, clip.data_url()))
    assert normalize_text(direct) == normalize_text(clip.text)  # a real transcript

    through_chat = chat(front.url, FRONT_KEY, model, clip.data_url())
    assert chat_text(through_chat) == direct
    assert through_chat.json()["model"] == model
    assert through_chat.json()["usage"]["seconds"] == 11

    sdk = openai.OpenAI(base_url=f"{front.url}/v1", api_key=FRONT_KEY, max_retries=0)
    result = sdk.audio.transcriptions.create(model=model, file=clip.path)
    assert result.text == direct


@pytest.mark.parametrize(
    ("model", "says"),
    [("up-audio", "English-only"), ("up-mimo", "only transcribes")],
    ids=["the-upstreams-refusal", "a-chat-dialect"],
)
def test_a_translation_the_upstream_cannot_do_is_a_400(
    front: RunningServer, speech: dict[str, Clip], assert_error: Any, model: str, says: str
) -> None:
    """tiny.en upstream refuses to translate (its 400 and message come through); a chat
    dialect has no way to ask for a translation at all."""
    response = httpx.post(
        f"{front.url}/v1/audio/translations",
        files={"file": ("jfk.wav", speech["jfk_inaugural_1961"].bytes())},
        data={"model": model},
        headers={"Authorization": f"Bearer {FRONT_KEY}"},
        timeout=60,
    )
    error = assert_error(response, 400, "invalid_request")
    assert says in error["message"]


def test_models_lists_the_upstream_models(front: RunningServer, upstream: RunningServer) -> None:
    import openai

    sdk = openai.OpenAI(base_url=f"{front.url}/v1", api_key=FRONT_KEY, max_retries=0)
    owners = {model.id: model.owned_by for model in sdk.models.list()}
    host = upstream.url.removeprefix("http://")
    assert owners["up-mimo"] == owners["up-audio"] == host
    assert owners[MODEL] == "harken"


def test_harken_models_shows_the_upstream(tmp_path: Path, upstream: RunningServer) -> None:
    from typer.testing import CliRunner

    from harken.cli import app

    config = tmp_path / "harken.toml"
    config.write_text(
        f'[models.remote-mimo]\nupstream = "{upstream.url}/v1"\ndialect = "mimo-chat"\n'
        f'upstream_model = "{MODEL}"\napi_key_env = "{KEY_ENV}"\n'
    )
    result = CliRunner().invoke(
        app, ["models", "--config", str(config), "--json"], env={KEY_ENV: UPSTREAM_KEY}
    )
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.output) if r["name"] == "remote-mimo")
    assert row["backend"] == "upstream"
    assert upstream.url in row["weights"] and KEY_ENV in row["weights"]
    assert UPSTREAM_KEY not in result.output


# --- long audio in pieces
@dataclass(frozen=True)
class LongRecording:
    flac: bytes
    duration: float
    clips: list[tuple[Clip, float, float]]


@pytest.fixture(scope="module")
def long_recording(speech: dict[str, Clip]) -> LongRecording:
    """About two minutes: English clips with pauses of 0.8 to 6 s between them."""
    ids = [
        "ls_2412-153948-0000", "ls_1988-24833-0001", "ls_1272-128104-0000",
        "ls_1995-1837-0001", "librivox_sns01_0870", "ls_1988-24833-0003",
        "ls_1272-141231-0002", "ls_2412-153948-0001", "librivox_sns01_0920",
        "ls_3752-4944-0002", "ls_1089-134686-0000", "ls_1988-24833-0002",
    ]  # fmt: skip
    samples, placed = join_clips([speech[i] for i in ids], (0.8, 3.0, 1.5, 6.0, 1.0, 2.5))
    flac = io.BytesIO()
    import av

    with av.open(flac, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    duration = samples.shape[0] / SAMPLE_RATE
    assert duration * 32_000 > 3 * CAP_MB * 1024 * 1024  # several caps' worth of audio
    return LongRecording(flac.getvalue(), duration, [(p.clip, p.start, p.end) for p in placed])


def _srt(text: str) -> list[Any]:
    import srt

    return list(srt.parse(text))


def upstream_calls(front: RunningServer, model: str) -> int:
    stats = front.service._models[model].transcriber.upstream_stats
    return int(stats.calls["200"])


def test_a_long_recording_comes_back_whole_in_order_with_subtitles(
    front: RunningServer, upstream: RunningServer, long_recording: LongRecording
) -> None:
    """Through the text-only MiMo dialect: cut to fit 0.5 MB, every clip's words come back in
    order and each cue sits over the stretch of speech it transcribes."""
    calls_before = upstream_calls(front, "up-mimo")
    response = transcribe(
        front.url, FRONT_KEY, "up-mimo", long_recording.flac, response_format="srt"
    )
    assert response.status_code == 200, response.text
    cues = _srt(response.text)
    calls = upstream_calls(front, "up-mimo") - calls_before
    assert calls >= 8, calls  # many pieces, each under the upstream's cap (no 413s)
    assert 1 <= len(cues) <= calls  # one cue per piece that had text
    starts = [cue.start.total_seconds() for cue in cues]
    assert starts == sorted(starts)
    assert cues[-1].end.total_seconds() <= long_recording.duration + 0.01
    # Whole and in order: the joined text against the clips' texts joined in order.
    text = " ".join(cue.content for cue in cues)
    reference = " ".join(clip.text for clip, _, _ in long_recording.clips)
    assert wer(reference, text) < 0.15, text
    # Each clip's words are in the cues over its stretch of the recording.
    for clip, start, end in long_recording.clips:
        over = [
            c.content
            for c in cues
            if c.start.total_seconds() < end and c.end.total_seconds() > start
        ]
        heard = set(normalize_text(" ".join(over)).split())
        words = normalize_text(clip.text).split()
        assert sum(w in heard for w in words) >= 0.7 * len(words), (clip.id, over)


def test_a_long_recording_streams_in_order(
    front: RunningServer, long_recording: LongRecording
) -> None:
    """The chat dialect's stream: a delta per piece as it is answered, joined to the whole
    text; verbose_json through the openai-audio dialect keeps the upstream's segments."""
    data_url = "data:audio/flac;base64," + base64.b64encode(long_recording.flac).decode()
    body = {
        "model": "up-audio",
        "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": data_url}}]}],
        "stream": True,
    }  # fmt: skip
    deltas, arrivals = [], []
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{front.url}/v1/chat/completions", json=body,
        headers={"api-key": FRONT_KEY}, timeout=300,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                content = chunk["choices"][0]["delta"].get("content")
                if content:
                    deltas.append(content)
                    arrivals.append(time.monotonic() - started)
    assert len(deltas) >= 8
    print(f"\nfirst text after {arrivals[0]:.1f} s, the last after {arrivals[-1]:.1f} s")
    streamed = normalize_text("".join(deltas))

    verbose = transcribe(
        front.url, FRONT_KEY, "up-audio", long_recording.flac, response_format="verbose_json"
    )
    assert verbose.status_code == 200, verbose.text
    result = verbose.json()
    assert normalize_text(result["text"]) == streamed
    assert result["language"] == "english"
    assert abs(result["duration"] - long_recording.duration) < 0.1
    segments = result["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert all(a["start"] <= b["start"] for a, b in itertools.pairwise(segments))
    reference = " ".join(clip.text for clip, _, _ in long_recording.clips)
    assert wer(reference, streamed) < 0.15, streamed


# --- a misbehaving upstream
def faulty(front: RunningServer, fault: tuple[FaultApp, str], *script: str) -> httpx.Response:
    app, _ = fault
    app.script[:] = list(script)
    app.requests.clear()
    return chat(front.url, FRONT_KEY, "up-faulty", _short_clip())


def _short_clip() -> str:
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(tone)).decode()


def test_429_is_retried_after_retry_after(front: Any, fault: Any) -> None:
    started = time.monotonic()
    response = faulty(front, fault, "429")
    assert chat_text(response) == "fault free"
    assert len(fault[0].requests) == 2
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured


def test_dropped_connections_are_retried(front: Any, fault: Any) -> None:
    assert chat_text(faulty(front, fault, "close", "500")) == "fault free"
    assert len(fault[0].requests) == 3


@pytest.mark.parametrize(
    ("script", "status", "code", "attempts"),
    [
        (["500"] * 3, 502, "upstream_error", 3),
        (["close"] * 3, 502, "upstream_error", 3),
        (["garbage"], 502, "upstream_error", 1),  # a 200 that can't be read is not retried
        (["hang"] * 3, 504, "upstream_timeout", 3),
        (["503-long"], 503, "upstream_unavailable", 1),  # Retry-After beyond what harken waits
    ],
    ids=["500", "close", "garbage", "hang", "retry-after-too-long"],
)
def test_failures_after_retries_are_contract_errors(
    front: Any, fault: Any, assert_error: Any, script: list[str], status: int, code: str,
    attempts: int,
) -> None:  # fmt: skip
    started = time.monotonic()
    response = faulty(front, fault, *script)
    error = assert_error(response, status, code)
    assert len(fault[0].requests) == attempts
    assert time.monotonic() - started < 10  # never a hang: 3 × 1 s timeouts and short waits
    assert UPSTREAM_KEY not in response.text
    assert fault[1].removeprefix("http://") in error["message"]


def test_the_upstreams_4xx_keeps_its_message_without_the_key(
    front: Any, fault: Any, assert_error: Any
) -> None:
    error = assert_error(faulty(front, fault, "400"), 400, "invalid_request")
    assert "Incorrect API key provided" in error["message"]
    assert UPSTREAM_KEY not in error["message"]
    assert len(fault[0].requests) == 1


def test_keys_go_only_where_they_belong(
    front: Any, fault: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream gets its own key and never harken's; the key is in no log, body or metric."""
    import logging

    caplog.set_level(logging.DEBUG)
    faulty(front, fault, "500", "ok")
    app, _ = fault
    assert app.requests
    for headers in app.requests:
        assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert headers["api-key"] == UPSTREAM_KEY
        assert FRONT_KEY not in json.dumps(headers)
    metrics = front_metrics(front)
    assert UPSTREAM_KEY not in caplog.text and UPSTREAM_KEY not in metrics
    assert FRONT_KEY not in caplog.text


def test_metrics_count_upstream_calls_retries_and_failures(front: Any, fault: Any) -> None:
    faulty(front, fault, "500", "ok")
    faulty(front, fault, "garbage")
    metrics = front_metrics(front)
    host = fault[1].removeprefix("http://")

    def value(name: str, **labels: str) -> float:
        wanted = {"model": "up-faulty", "upstream": host, **labels}
        for found, text, number in re.findall(r"^(\w+)\{(.*)\} (\S+)$", metrics, re.M):
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', text))
            if found == name and pairs == wanted:
                return float(number)
        raise AssertionError(f"no {name} {wanted}")

    assert value("harken_upstream_calls_total", outcome="500") >= 1
    assert value("harken_upstream_calls_total", outcome="200") >= 2
    assert value("harken_upstream_retries_total") >= 1
    assert value("harken_upstream_failures_total", kind="error") >= 1
    assert value("harken_upstream_call_duration_seconds_count") >= 3


def test_a_client_that_leaves_cancels_the_upstream_call(front: Any, fault: Any) -> None:
    app, _ = fault
    app.script[:] = ["hang"]
    app.disconnects.clear()
    requests_before = len(app.requests)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{front.url}/v1/chat/completions",
            json={"model": "up-slow", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": _short_clip()}}]}]},
            headers={"api-key": FRONT_KEY}, timeout=1.5,
        )  # fmt: skip
    left = time.monotonic()
    deadline = left + 10
    while not app.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.disconnects, "the upstream call went on after the client left"
    assert app.disconnects[0] - left < 5  # not the 60 s call timeout
    assert len(app.requests) == requests_before + 1
    deadline = time.monotonic() + 10
    while front.service.scheduler.admitted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert front.service.scheduler.admitted == 0


def test_a_failure_mid_stream_is_an_error_event(
    front: Any, fault: Any, long_recording: LongRecording
) -> None:
    """The first piece is answered and streamed; the second fails: the stream ends with the
    contract's error as an event (the status line was sent long before)."""
    app, _ = fault
    app.script[:] = ["ok", "500"]
    data_url = "data:audio/flac;base64," + base64.b64encode(long_recording.flac).decode()
    body = {
        "model": "up-slow", "stream": True,
        "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": data_url}}]}],
    }  # fmt: skip
    with httpx.stream(
        "POST", f"{front.url}/v1/chat/completions", json=body,
        headers={"api-key": FRONT_KEY}, timeout=60,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line[6:7] == "{"]
    contents = [e["choices"][0]["delta"].get("content") for e in events if "choices" in e]
    assert "fault free" in contents
    assert events[-1]["error"]["code"] == "upstream_error"
    assert UPSTREAM_KEY not in json.dumps(events)


def test_upstream_config() -> None:
    from pydantic import ValidationError

    from harken.config import ModelConfig

    config = ModelConfig(upstream="https://api.example.com/v1", dialect="mimo-chat")
    assert config.backend == "upstream"
    with pytest.raises(ValidationError, match="upstream"):
        ModelConfig(backend="upstream")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, UPSTREAM_KEY)
        keyed = ModelConfig(upstream="https://h/v1", api_key_env=KEY_ENV)
        assert keyed.upstream_api_key() == UPSTREAM_KEY
        assert UPSTREAM_KEY not in repr(keyed)
    assert ModelConfig(upstream="https://h/v1").upstream_api_key() is None


def test_nothing_is_contacted_at_start(harken_home: Path, fault: tuple[FaultApp, str]) -> None:
    app, url = fault
    before = len(app.requests)
    settings = Settings(
        home=harken_home, default_model="up-slow", preload=["up-slow"],
        models=upstream_models("http://127.0.0.1:9", url),
    )  # fmt: skip
    created = create_app(settings)

    async def start() -> None:
        await created.state.service.preload()
        assert created.state.service.ready.is_set()
        await created.state.service.shutdown(1)

    asyncio.run(start())
    assert len(app.requests) == before
