"""Hostile audio: whatever bytes arrive, the answer is a 200 or a 4xx in the contract's error body.

Every file here is made at test time with PyAV from a real recording (or crafted byte by byte,
for the bombs and the lying headers), then sent through the real HTTP server. A 5xx, a hang or
a dead server fails the test. Decompression bombs must be stopped by the duration cap while
decoding, with the server's memory measured while it works on them.
"""

from __future__ import annotations

import base64
import functools
import io
import struct
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harken.audio import decode_audio
from harken.errors import InvalidAudio

# The tiny English model keeps each valid request fast; the fuzz is about the input, not WER.
MODEL = "whisper-tiny.en"
CLIP = "ls_1089-134691-0000"  # "HE COULD WAIT NO LONGER", 2.1 s

# container, codec, encoder sample rate, encoder sample format, MIME label
FORMATS: dict[str, tuple[str, str, int, str, str]] = {
    "wav": ("wav", "pcm_s16le", 16000, "s16", "audio/wav"),
    "mp3": ("mp3", "libmp3lame", 16000, "s16p", "audio/mpeg"),
    "flac": ("flac", "flac", 16000, "s16", "audio/flac"),
    "ogg": ("ogg", "libopus", 48000, "s16", "audio/ogg"),
    "m4a": ("ipod", "aac", 16000, "fltp", "audio/mp4"),
    "webm": ("webm", "libopus", 48000, "s16", "audio/webm"),
}
ERROR_CODES = {
    400: {"invalid_audio", "invalid_request", "invalid_json"},
    413: {"file_too_large", "audio_too_long"},
}


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings for tests that send real requests: few, slow examples, no database."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
        # Each example is a real request: find failures, don't spend minutes shrinking them.
        phases=[Phase.explicit, Phase.generate],
    )


ENDPOINTS = st.sampled_from(["chat", "multipart"])
CASES: dict[str, int] = {}  # how many requests each fuzz test sent, printed at the end


# --- making the files
def encode(samples: np.ndarray, fmt: str) -> bytes:
    """16 kHz float samples as a complete file of one of FORMATS."""
    container, codec, rate, sample_format, _ = FORMATS[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format=sample_format, layout="mono", rate=rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def float_wav(samples: np.ndarray, *, dtype: str = "<f4") -> bytes:
    """A WAVE_FORMAT_IEEE_FLOAT file, written by hand so that NaN and inf survive."""
    data = samples.astype(dtype).tobytes()
    width = np.dtype(dtype).itemsize
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * width, width, width * 8)
    return (
        b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


def pcm_wav(
    samples: np.ndarray,
    *,
    riff_size: int | None = None,
    data_size: int | None = None,
    rate: int = 16000,
    channels: int = 1,
) -> bytes:
    """A 16-bit PCM WAV whose header may lie about its sizes, rate or channels."""
    data = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, 16)
    riff = 4 + 8 + len(fmt) + 8 + len(data) if riff_size is None else riff_size
    size = len(data) if data_size is None else data_size
    return (
        b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt))
        + fmt + b"data" + struct.pack("<I", size) + data
    )  # fmt: skip


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _utf8_number(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    return bytes([0xE0 | n >> 12, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])


def flac_bomb(seconds: float, rate: int = 8000, block: int = 65535) -> bytes:
    """Valid FLAC of digital silence: 12 bytes per 65,535-sample CONSTANT frame.

    Written by hand (the encoder won't take blocks this large): 4 hours are ~24 KB.
    """
    frames = -(-int(seconds * rate) // block)
    info = struct.pack(">HH", block, block) + bytes(6)
    info += ((rate << 44) | (15 << 36) | frames * block).to_bytes(8, "big") + bytes(16)
    out = bytearray(b"fLaC" + bytes([0x80, 0, 0, 34]) + info)
    for index in range(frames):
        # fixed blocksize, size in a 16-bit field, rate from STREAMINFO, mono, 16 bits/sample
        head = bytes([0xFF, 0xF8, 0x70, 0x08]) + _utf8_number(index) + struct.pack(">H", block - 1)
        frame = head + bytes([_crc8(head)]) + b"\x00\x00\x00"  # CONSTANT subframe of 0
        out += frame + struct.pack(">H", _crc16(frame))
    return bytes(out)


def opus_bomb(seconds: float, container: str = "ogg") -> bytes:
    """Ogg or WebM Opus of silence: one 8-byte 60 ms packet muxed over and over."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(
            "libopus", rate=48000, layout="mono", options={"frame_duration": "60"}
        )
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 48000), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = 0
        template = bytes(list(stream.encode(frame))[-1])
        step = 2880
        for index in range(int(seconds * 48000 / step)):
            packet = av.Packet(template)
            packet.stream = stream
            packet.time_base = Fraction(1, 48000)
            packet.pts = packet.dts = index * step
            packet.duration = step
            out.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def samples(speech: dict[str, Any]) -> np.ndarray:
    return decode_audio(speech[CLIP].bytes())


@functools.cache
def media() -> dict[str, bytes]:
    """The clip in every format (a function, not a fixture: hypothesis would print it)."""
    from tests.conftest import load_manifest

    return {fmt: encode(decode_audio(load_manifest()[CLIP].bytes()), fmt) for fmt in FORMATS}


# --- sending and judging
def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def chat_body(data: str, fmt: str | None = None) -> dict[str, Any]:
    audio: dict[str, Any] = {"data": data}
    if fmt is not None:
        audio["format"] = fmt
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}],
        "asr_options": {"language": "en"},
    }


def check(response: httpx.Response) -> dict[str, Any]:
    """A 200 with a transcript, or a 4xx in the contract's error body; anything else fails."""
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code == 200:
        if "choices" in body:
            assert isinstance(body["choices"][0]["message"]["content"], str)
        else:
            assert isinstance(body["text"], str)
        return body
    assert response.status_code in ERROR_CODES, response.text
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error", error
    assert error["code"] in ERROR_CODES[response.status_code], error
    assert "Traceback" not in error["message"] and "/work/" not in error["message"]
    return body


class Sender:
    """Sends the same bytes to every audio endpoint the server has, and counts the requests."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=300)
        paths = self.client.get("/openapi.json").json()["paths"]
        self.multipart = "/v1/audio/transcriptions" in paths
        self.sent = 0

    def chat(self, raw: bytes, mime: str = "audio/wav") -> httpx.Response:
        self.sent += 1
        return self.client.post(
            "/v1/chat/completions", json=chat_body(f"data:{mime};base64,{b64(raw)}")
        )

    def one(self, endpoint: str, raw: bytes, mime: str, name: str = "audio.bin") -> Any:
        """Send to one endpoint (hypothesis picks which, to halve the cost of valid audio)."""
        if endpoint == "chat" or not self.multipart:
            return check(self.chat(raw, mime))
        self.sent += 1
        response = self.client.post(
            "/v1/audio/transcriptions",
            files={"file": (name, raw, mime)},
            data={"model": MODEL, "language": "en"},
        )
        return check(response)

    def all(self, raw: bytes, mime: str = "audio/wav", name: str = "audio.wav") -> list[Any]:
        """The bodies of the answers from chat completions and, when present, transcriptions."""
        bodies = [check(self.chat(raw, mime))]
        if self.multipart:
            self.sent += 1
            response = self.client.post(
                "/v1/audio/transcriptions",
                files={"file": (name, raw, mime)},
                data={"model": MODEL, "language": "en"},
            )
            bodies.append(check(response))
        # Same verdict from both dialects: both valid, or both refused with the same code.
        verdicts = {b["error"]["code"] if "error" in b else "ok" for b in bodies}
        assert len(verdicts) == 1, bodies
        return bodies


@pytest.fixture(scope="module")
def sender(server: Any) -> Iterator[Sender]:
    sender = Sender(server.url)
    yield sender
    sender.client.close()
    # The server is still alive and well after everything this module threw at it.
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Iterator[None]:
    yield
    print("\nfuzz cases sent:", CASES)


def transcript(body: dict[str, Any]) -> str:
    return body["choices"][0]["message"]["content"] if "choices" in body else body["text"]


# --- the tests
def test_every_format_is_judged_by_its_bytes_not_its_label(sender: Sender):
    """Each generated file is real audio (it transcribes to the recording's words) even when
    sent under another format's MIME label; both endpoints take turns."""
    labels = [label for *_, label in FORMATS.values()] + ["application/octet-stream", "text/x"]
    for i, fmt in enumerate(FORMATS):
        wrong = labels[(i + 1) % len(labels)]
        endpoint = "chat" if i % 2 else "multipart"
        body = sender.one(endpoint, media()[fmt], wrong, "clip.bin")
        assert "wait" in transcript(body).lower(), (fmt, body)
    CASES["wrong_mime"] = len(FORMATS)


def test_the_decoder_alone_on_thousands_of_damaged_files():
    """The cheap half of the fuzz: decode_audio itself, on many more cases than HTTP allows.

    Whatever the bytes, it returns finite samples in [-1, 1] or raises InvalidAudio or
    AudioTooLong (which the API turns into 400 and 413); nothing else may escape.
    """
    from harken.errors import AudioTooLong, InvalidAudio

    rng = np.random.default_rng(5)
    files = media()
    outcomes = {"ok": 0, "invalid": 0, "too_long": 0}
    for whole in files.values():
        cuts = {int(len(whole) * f) for f in np.linspace(0, 1, 30)} | {1, 4, 12, 44, 100}
        variants = [whole[:cut] for cut in cuts]
        for other in files.values():  # header of this format, body of another
            variants += [whole[:cut] + other[cut:] for cut in (4, 12, 44, 200)]
        for _ in range(20):  # flipped bytes in the middle of a valid file
            damaged = np.frombuffer(whole, np.uint8).copy()
            damaged[rng.integers(0, len(whole), 8)] = rng.integers(0, 256, 8)
            variants.append(damaged.tobytes())
        for raw in variants:
            try:
                audio = decode_audio(raw, max_seconds=30)
            except InvalidAudio:
                outcomes["invalid"] += 1
            except AudioTooLong:
                outcomes["too_long"] += 1
            else:
                assert audio.dtype == np.float32 and np.isfinite(audio).all()
                assert np.abs(audio).max(initial=0) <= 1.0
                outcomes["ok"] += 1
    CASES["decoder_only"] = sum(outcomes.values())
    print("\ndecoder-only fuzz:", outcomes)


@fuzz(10)
@given(fmt=st.sampled_from(list(FORMATS)), fraction=st.floats(0.0, 1.0), endpoint=ENDPOINTS)
def test_truncated_files_of_every_format(sender: Sender, fmt, fraction, endpoint):
    whole = media()[fmt]
    raw = whole[: max(1, int(len(whole) * fraction))]
    sender.one(endpoint, raw, FORMATS[fmt][4], f"cut.{fmt}")
    CASES["truncated"] = CASES.get("truncated", 0) + 1


@fuzz(8)
@given(
    head=st.sampled_from(list(FORMATS)),
    tail=st.sampled_from(list(FORMATS)),
    cut=st.integers(4, 400),
    endpoint=ENDPOINTS,
)
def test_header_of_one_format_body_of_another(sender: Sender, head, tail, cut, endpoint):
    raw = media()[head][:cut] + media()[tail][cut:]
    sender.one(endpoint, raw, FORMATS[head][4], f"mixed.{head}")
    CASES["spliced"] = CASES.get("spliced", 0) + 1


_MAGIC = [
    b"",
    b"RIFF\xff\xff\xff\xffWAVEfmt ",
    b"fLaC",
    b"OggS\x00\x02",
    b"ID3\x04\x00",
    b"\xff\xfb",
    b"\x1aE\xdf\xa3",
    b"\x00\x00\x00\x18ftypM4A ",
    b"#!AMR\n",
    b"MThd",
]


@fuzz(40)
@given(
    magic=st.sampled_from(_MAGIC), noise=st.binary(min_size=0, max_size=3000), endpoint=ENDPOINTS
)
def test_random_bytes_behind_real_magic_numbers(sender: Sender, magic, noise, endpoint):
    raw = magic + noise
    if raw:
        sender.one(endpoint, raw, "audio/wav")
    CASES["random"] = CASES.get("random", 0) + 1


def test_zero_length_and_empty_payloads(server: Any, sender: Sender):
    for data in ["data:audio/wav;base64,", "", "   ", "data:audio/wav;base64,===="]:
        response = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(data))
        body = check(response)
        assert response.status_code == 400 and body["error"]["code"] == "invalid_audio", body
    if sender.multipart:
        response = httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("empty.wav", b"", "audio/wav")},
            data={"model": MODEL},
        )
        assert check(response) and response.status_code == 400, response.text


def test_wav_headers_that_lie(sender: Sender, samples: np.ndarray):
    """Sizes of gigabytes, absurd rates and channel counts: quick 200s or 400s, no allocation."""
    second = samples  # the whole sentence: a cut-off word sends tiny.en into slow fallbacks
    liars = {
        "riff_4gb": pcm_wav(second, riff_size=0xFFFFFFFF, data_size=0xFFFFFFF0),
        "data_4gb": pcm_wav(second, data_size=0xFFFFFFFF),
        "data_0": pcm_wav(second, data_size=0),
        "rate_1hz": pcm_wav(second, rate=1),
        "rate_4ghz": pcm_wav(second, rate=0xFFFFFFFF),
        "rate_151mhz": pcm_wav(second, rate=150_979_391),  # the resampler's costliest kind
        "rate_0": pcm_wav(second, rate=0),
        "channels_0": pcm_wav(second, channels=0),
        "channels_65535": pcm_wav(second, channels=65535),
        "header_only_4gb": pcm_wav(second[:0], data_size=0xFFFFFFF0),
    }
    heard = {"riff_4gb", "data_4gb", "data_0"}  # real audio behind the lie: still transcribed
    for index, (name, raw) in enumerate(liars.items()):
        started = time.monotonic()
        # Real audio behind a lie costs a transcription: one endpoint each, taking turns.
        endpoint = "chat" if index % 2 else "multipart"
        bodies = [sender.one(endpoint, raw, "audio/wav")] if name in heard else sender.all(raw)
        assert time.monotonic() - started < 120, name
        if name in heard:
            assert all("error" not in b for b in bodies), (name, bodies)
        else:  # 1 Hz would be a bomb (hours once resampled); the rest aren't audio at all
            assert all(b["error"]["code"] == "invalid_audio" for b in bodies), (name, bodies)
    CASES["lying_wav"] = len(liars)


def test_an_absurd_sample_rate_is_refused_before_resampling(samples: np.ndarray):
    """FFmpeg's resampler builds its filter bank for the ratio before reading a sample: for a
    header claiming 150,979,391 Hz that took 4-6 s of CPU and 1.2 GB. It is refused first; the
    fastest real interfaces (768 kHz) still decode."""
    started = time.thread_time()
    with pytest.raises(InvalidAudio) as caught:
        decode_audio(pcm_wav(samples[:4000], rate=150_979_391))
    assert time.thread_time() - started < 0.5
    assert caught.value.status == 400 and "sample rate" in str(caught.value)
    fast = decode_audio(pcm_wav(samples, rate=767_993))  # as awkward a ratio as is allowed
    assert abs(fast.shape[0] - samples.shape[0] * 16_000 / 767_993) < 50


def test_nan_and_inf_samples(sender: Sender, samples: np.ndarray):
    poisoned = samples.astype(np.float32).copy()
    # About 40 bad samples a second. (Denser poison, one in 80, still gave a 200 but cost tiny.en
    # 30x the time of the clean clip and lost the words: a cost, not a crash.)
    poisoned[::1601] = np.nan
    poisoned[400::1709] = np.inf
    poisoned[800::1801] = -np.inf
    poisoned[1200::1901] = 1e30
    # float32 to one endpoint, float64 to the other: the words survive the poison.
    for endpoint, dtype in (("chat", "<f4"), ("multipart", "<f8")):
        body = sender.one(endpoint, float_wav(poisoned, dtype=dtype), "audio/wav")
        assert "wait" in transcript(body).lower(), body
    # Nothing but NaN or inf (a quarter second each): a 200 or a 400, never a 500.
    # (+inf takes the same path as -inf, clipped to a constant, and costs tiny.en 30 s of
    # hallucination on a busy machine: left out to keep the suite short.)
    for fill in (np.nan, -np.inf):
        sender.one("chat", float_wav(np.full(4000, fill, np.float32)), "audio/wav")
    CASES["nan_inf"] = 4


# --- decompression bombs
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.fixture(scope="module")
def capped_server(harken_home: Path) -> Iterator[Any]:
    """A 60-second cap, so that an hour-long bomb is stopped after a minute of decoding."""
    from tests.conftest import run_server

    with run_server(
        harken_home, max_audio_seconds=60, default_model=MODEL, preload=[MODEL]
    ) as running:
        yield running


@pytest.mark.parametrize("kind", ["flac", "ogg", "webm"])
def test_decompression_bomb_is_stopped_while_decoding(capped_server: Any, kind: str):
    hours = 4 if kind == "flac" else 1
    raw = flac_bomb(hours * 3600) if kind == "flac" else opus_bomb(hours * 3600, kind)
    full_decode = hours * 3600 * 16000 * 4  # float32 samples, were it all decoded
    assert len(raw) * 100 < full_decode  # a real bomb: over 100x expansion

    # The server runs in this process: sample its resident memory while it works.
    peak = baseline = rss_bytes()
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        sender = Sender(capped_server.url)
        bodies = sender.all(raw, f"audio/{kind}", f"bomb.{kind}")
    finally:
        done.set()
        watcher.join()
    elapsed = time.monotonic() - started
    for body in bodies:
        assert body["error"]["code"] == "audio_too_long", body
    growth = peak - baseline
    print(
        f"\n{kind} bomb: {len(raw)} bytes → {hours} h ({full_decode / 2**20:.0f} MiB if decoded); "
        f"413 in {elapsed:.2f} s, server RSS growth {growth / 2**20:.1f} MiB"
    )
    # A 60 s cap is 3.7 MiB of samples; decoding the whole bomb would take 230-920 MiB.
    assert growth < 64 * 2**20, growth
    assert elapsed < 30
