"""Slow and vanishing clients: cut off or cleaned up, and nobody else notices.

A server with short body timeouts (1 s idle, 3 s whole body) takes slowloris uploads over raw
sockets while a normal client transcribes; clients that leave mid-request or mid-stream must
give their worker back long before their audio would have been transcribed.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from harken.audio import decode_audio
from tests.conftest import run_server

MODEL = "whisper-tiny.en"


@pytest.fixture(scope="module")
def strict_server(harken_home: Path) -> Iterator[Any]:
    with run_server(
        harken_home,
        default_model=MODEL,
        preload=[MODEL],
        body_idle_timeout_seconds=1.0,
        body_timeout_seconds=3.0,
    ) as running:
        yield running


def chat_body(data_url: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": data_url}}],
            }
        ],
        "stream": stream,
    }


def open_upload(url: str, declared: int) -> socket.socket:
    """Headers of a POST that promises `declared` bytes of body, and nothing more yet."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode()
    )
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    match = re.search(rb"content-length: (\d+)", data.partition(b"\r\n\r\n")[0], re.I)
    return int(match.group(1)) if match else 0


def test_a_stalled_upload_gets_408_after_the_idle_timeout(strict_server: Any):
    sock = open_upload(strict_server.url, 100_000)
    sock.sendall(b'{"model": "whisper-tiny.en", "messages": [')
    started = time.monotonic()
    status, body = read_response(sock)
    waited = time.monotonic() - started
    sock.close()
    assert status == 408, body
    assert body["error"]["code"] == "request_timeout" and body["error"]["type"]
    assert 0.9 < waited < 10, waited


def test_a_trickled_upload_is_cut_off_by_the_total_timeout(strict_server: Any):
    """One byte every 0.3 s never trips the idle timeout; the whole-body deadline still does."""
    sock = open_upload(strict_server.url, 100_000)
    started = time.monotonic()
    sock.settimeout(0.3)
    answer = b""
    while time.monotonic() - started < 20:
        try:
            sock.sendall(b" ")
            answer += sock.recv(65536)
            if answer:
                break
        except TimeoutError:
            continue
        except OSError:
            break
    waited = time.monotonic() - started
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 2.5 < waited < 10, waited


def test_slow_clients_do_not_hold_up_others(strict_server: Any, speech: Any):
    """Thirty stalled uploads and a trickler at once; a normal client transcribes meanwhile."""
    stalled = [open_upload(strict_server.url, 1_000_000) for _ in range(30)]
    for sock in stalled:
        sock.sendall(b"{")
    clip = speech["ls_1089-134691-0000"]
    response = httpx.post(
        f"{strict_server.url}/v1/chat/completions", json=chat_body(clip.data_url()), timeout=300
    )
    assert response.status_code == 200, response.text
    assert "wait" in response.json()["choices"][0]["message"]["content"].lower()
    statuses = []
    for sock in stalled:
        try:
            statuses.append(read_response(sock)[0])
        except (OSError, ValueError, json.JSONDecodeError):
            statuses.append(None)
        sock.close()
    assert statuses.count(408) >= 25, statuses  # all cut off (a few may just be closed)
    assert httpx.get(f"{strict_server.url}/health").status_code == 200


# --- vanishing clients
@pytest.fixture(scope="module")
def long_clip(speech: Any) -> str:
    """About 5 minutes of real speech (the sonnets, twice) as a 24 kbit/s Opus data URL."""
    samples = decode_audio(speech["librivox_shakespeare_sonnets_1-3"].bytes())
    samples = np.tile(samples, 2)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=16000, layout="mono", bit_rate=24000)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return "data:audio/ogg;base64," + base64.b64encode(buffer.getvalue()).decode()


def cancelled_jobs(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(r'^harken_jobs_total\{outcome="cancelled"\} (\S+)', text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_for_admission(server: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.service.scheduler.running == 0:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)


def wait_until_idle(server: Any, timeout: float) -> float:
    started = time.monotonic()
    scheduler = server.service.scheduler
    while scheduler.admitted or scheduler.running:  # a job lets go of its place, then its thread
        assert time.monotonic() - started < timeout, "the job kept its place"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_client_that_leaves_frees_its_worker(strict_server: Any, long_clip: str, stream: bool):
    """5 minutes of audio would keep tiny.en busy for a good while; the job must stop soon
    after its client leaves, whether it was waiting for JSON or reading a stream."""
    # A job an earlier test left running would pass for this one's admission below, and the
    # client would leave while its own upload was still being read (nothing admitted, nothing
    # cancelled): start from an idle server.
    wait_until_idle(strict_server, timeout=120)
    before = cancelled_jobs(strict_server.url)
    body = json.dumps(chat_body(long_clip, stream=stream)).encode()
    # The body is sent in one go, then the client waits: no body timeout applies.
    sock = open_upload(strict_server.url, len(body))
    sock.sendall(body)
    if stream:
        sock.settimeout(300)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:300]
    else:
        wait_for_admission(strict_server)
    time.sleep(0.5)
    sock.close()  # gone, without a word
    freed_after = wait_until_idle(strict_server, timeout=60)
    assert cancelled_jobs(strict_server.url) == before + 1
    print(f"\nclient left ({'stream' if stream else 'plain'}): worker freed in {freed_after:.1f} s")


def test_others_are_served_after_clients_vanish(strict_server: Any, speech: Any):
    clip = speech["ls_1089-134691-0000"]
    ok = threading.Event()

    def normal() -> None:
        response = httpx.post(
            f"{strict_server.url}/v1/chat/completions", json=chat_body(clip.data_url()), timeout=300
        )
        if response.status_code == 200:
            ok.set()

    for _ in range(5):  # five clients leave right after sending
        body = json.dumps(chat_body(clip.data_url())).encode()
        sock = open_upload(strict_server.url, len(body))
        sock.sendall(body)
        sock.close()
    thread = threading.Thread(target=normal)
    thread.start()
    thread.join(timeout=300)
    assert ok.is_set()
    wait_until_idle(strict_server, timeout=120)
