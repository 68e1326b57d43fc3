"""WAV headers, field by field: the decoder's answer is audio or a 400, never a 500, never a
dropped connection, and never slow.

The outside probe's repro files (a format tag or bit depth FFmpeg cannot open made PyAV raise
`AttributeError`, a 500 that also cost the client its kept-alive connection) are fixtures here,
sent over one raw connection that must serve the next request. Then hypothesis builds RIFF/WAVE
headers from every field (chunk ids and sizes, format tag, channels, rates, block align, bits,
the WAVE_FORMAT_EXTENSIBLE extension, byte flips): hundreds straight into the real decoder,
and a share of them through the real HTTP server on one kept-alive connection.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harken.audio import decode_pcm16
from harken.errors import AudioTooLong, InvalidAudio
from tests.servers import TINY, RawConnection, RawResponse, chat_json, multipart, run_built_server

# Decoded audio longer than this is refused while decoding (413): most fuzzed files stop there,
# and the rest, short, cost tiny.en about a second.
MAX_SECONDS = 0.2
DECODE_BOUND = 5.0  # seconds one decode may take, on a busy 2-core machine
REQUEST_BOUND = 60.0  # seconds one request may take, transcription included

PCM_GUID = bytes.fromhex("0100000000001000800000aa00389b71")
FLOAT_GUID = bytes.fromhex("0300000000001000800000aa00389b71")


def wav(
    payload: bytes,
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    byte_rate: int | None = None,
    block_align: int | None = None,
    fmt_size: int = 16,
    extension: bytes = b"",
    riff_id: bytes = b"RIFF",
    riff_size: int | None = None,
    wave_id: bytes = b"WAVE",
    fmt_id: bytes = b"fmt ",
    data_id: bytes = b"data",
    data_size: int | None = None,
) -> bytes:
    """A RIFF/WAVE file with every header field settable (None: the consistent value)."""
    align = block_align if block_align is not None else (channels * bits // 8) & 0xFFFF
    per_second = byte_rate if byte_rate is not None else (rate * align) & 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, per_second, align, bits) + extension
    size = data_size if data_size is not None else len(payload)
    body = wave_id + fmt_id + struct.pack("<I", fmt_size) + fmt
    body += data_id + struct.pack("<I", size) + payload
    riff = riff_size if riff_size is not None else len(body)
    return riff_id + struct.pack("<I", riff) + body


def issue_repro(tag: int, bits: int) -> bytes:
    """The probe's file: `struct.pack('<IHHIIHH', 16, tag, 1, 16000, 32000, 2, bits)`."""
    n = 3200
    return (
        b"RIFF" + struct.pack("<I", 36 + n) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, tag, 1, 16000, 32000, 2, bits)
        + b"data" + struct.pack("<I", n) + b"\0" * n
    )  # fmt: skip


def flipped(data: bytes, flips: dict[int, int]) -> bytes:
    out = bytearray(data)
    for position, value in flips.items():
        out[position % 44] = value
    return bytes(out)


SPEECHLESS = (np.sin(np.arange(3200) / 7.0) * 8000).astype("<i2").tobytes()  # 0.2 s of a tone
REPROS: dict[str, bytes] = {
    "float-tag-16-bit": issue_repro(3, 16),
    "extensible-without-extension": issue_repro(0xFFFE, 16),
    "zero-bits": issue_repro(1, 0),
    "alaw-16-bit": issue_repro(6, 16),
    "extensible-bad-guid": wav(
        SPEECHLESS, tag=0xFFFE, fmt_size=40, extension=struct.pack("<HHI", 22, 16, 4) + b"9" * 16
    ),
    "flipped-format-bytes": flipped(wav(SPEECHLESS), {20: 0xFF, 21: 0x7F, 34: 0x00}),
    "flipped-bits-to-odd": flipped(wav(SPEECHLESS), {34: 0x0B}),
}


@pytest.fixture(scope="module")
def wav_server(harken_home: Path) -> Iterator[Any]:
    aliases = {"mimo-v2.5-asr": TINY, "whisper-1": TINY}
    with run_built_server(harken_home, aliases=aliases, max_audio_seconds=MAX_SECONDS) as running:
        yield running


def check_answer(response: RawResponse) -> None:
    """A 200 with a transcript, or a 4xx with the contract's body; the connection stays open."""
    assert response.status < 500, response.body
    assert not response.closes, (response.status, response.headers)
    body = response.json()
    if response.status == 200:
        assert isinstance(body.get("text", body.get("choices")), str | list), body
        return
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] in {"invalid_audio", "audio_too_long"}, body


def send_both(connection: RawConnection, audio: bytes) -> list[RawResponse]:
    """The same bytes to chat completions and to transcriptions, on one connection."""
    chat = connection.request(
        "POST", "/v1/chat/completions", chat_json(audio), {"Content-Type": "application/json"}
    )
    form, content_type = multipart({"model": TINY}, audio)
    upload = connection.request(
        "POST", "/v1/audio/transcriptions", form, {"Content-Type": content_type}
    )
    return [chat, upload]


@pytest.mark.parametrize("name", list(REPROS))
def test_headers_no_decoder_opens_are_a_400_and_the_connection_lives_on(wav_server: Any, name):
    with RawConnection(wav_server.url) as connection:
        for response in send_both(connection, REPROS[name]):
            check_answer(response)
            if name in ("float-tag-16-bit", "extensible-without-extension", "zero-bits"):
                error = response.json()["error"]
                assert response.status == 400 and error["code"] == "invalid_audio", error
                assert error["type"] == "invalid_request_error"
        # The same kept-alive connection serves the next request.
        assert connection.request("GET", "/health").status == 200


def test_the_decoder_raises_only_its_own_errors_on_the_repros():
    for name, data in REPROS.items():
        try:
            decode_pcm16(data, max_seconds=60)
        except (InvalidAudio, AudioTooLong):
            pass
        except Exception as exc:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"{name}: {type(exc).__name__}: {exc}")


# --- the fuzz
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
TAGS = st.sampled_from([0, 1, 2, 3, 6, 7, 0x11, 0x55, 0x161, 0xFFFE]) | U16
CHANNELS = st.sampled_from([0, 1, 2, 6, 8, 255, 65535]) | U16
RATES = st.sampled_from([0, 1, 1999, 2000, 8000, 16000, 44100, 48000, 0xFFFFFFFF]) | U32
BITS = st.sampled_from([0, 1, 4, 8, 12, 16, 20, 24, 32, 64]) | U16
EXTENSION = st.builds(
    lambda size, valid, mask, guid: struct.pack("<HHI", size, valid, mask) + guid,
    U16, BITS, U32, st.sampled_from([PCM_GUID, FLOAT_GUID]) | st.binary(min_size=16, max_size=16),
)  # fmt: skip
CHUNK_IDS = st.sampled_from([b"RIFF", b"RIFX", b"RF64", b"WAVE", b"fmt ", b"data", b"LIST"])


# Each field of the header, and what hypothesis may put there instead of the consistent value.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "tag": TAGS,
    "channels": CHANNELS,
    "rate": RATES,
    "bits": BITS,
    "byte_rate": st.just(0) | U32,
    "block_align": st.just(0) | U16,
    "fmt_size": st.sampled_from([0, 14, 18, 40]) | U32,
    "riff_id": CHUNK_IDS | st.binary(min_size=4, max_size=4),
    "riff_size": st.sampled_from([0, 4, 0xFFFFFFFF]) | U32,
    "wave_id": CHUNK_IDS | st.binary(min_size=4, max_size=4),
    "fmt_id": CHUNK_IDS | st.binary(min_size=4, max_size=4),
    "data_id": CHUNK_IDS | st.binary(min_size=4, max_size=4),
    "data_size": st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF]) | U32,
}
PAYLOADS = st.sampled_from([SPEECHLESS, SPEECHLESS[:100], b"", b"\0" * 8000]) | st.binary(
    max_size=4000
)


@st.composite
def wav_files(draw: st.DrawFn) -> bytes:
    """A valid header with a few fields (any of them) replaced, maybe the extensible form,
    maybe bytes flipped or the file cut: mostly near-valid files, where decoders break."""
    count = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
    names = st.lists(st.sampled_from(sorted(FIELDS)), min_size=count, max_size=count, unique=True)
    fields = {name: draw(FIELDS[name]) for name in draw(names)}
    if draw(st.integers(0, 3)) == 0:
        fields.setdefault("tag", 0xFFFE)
        fields["extension"] = draw(EXTENSION)
        fields.setdefault("fmt_size", 40)
    data = wav(draw(PAYLOADS), **fields)
    flips = st.dictionaries(st.integers(0, 43), st.integers(0, 255), min_size=1, max_size=2)
    if draw(st.integers(0, 3)) == 0:
        data = flipped(data, draw(flips))
    cut = draw(st.none() | st.none() | st.none() | st.integers(0, len(data)))
    return data[:cut] if cut is not None else data


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # each example is real work: don't shrink
        suppress_health_check=list(HealthCheck),
    )


DECODED: dict[str, int] = {}


@fuzz_settings(500)
@given(data=wav_files())
def test_the_decoder_on_fuzzed_wav_headers(data: bytes):
    # The decoder's own CPU time: wall time here also counts other threads of this process
    # (the shared server's idle malloc_trim holds the allocator for seconds) and the machine's load.
    started = time.thread_time()
    try:
        pcm = decode_pcm16(data, max_seconds=30)
        DECODED["audio"] = DECODED.get("audio", 0) + 1
        assert pcm.dtype == np.int16 and pcm.shape[0] > 0
    except (InvalidAudio, AudioTooLong) as exc:
        kind = type(exc).__name__
        DECODED[kind] = DECODED.get(kind, 0) + 1
        assert exc.status in (400, 413)
    assert time.thread_time() - started < DECODE_BOUND


@pytest.fixture(scope="module")
def fuzz_connection(wav_server: Any) -> Iterator[RawConnection]:
    """One connection for every fuzzed request: if the server ever drops it, a test fails."""
    with RawConnection(wav_server.url) as connection:
        yield connection
        assert connection.request("GET", "/health").status == 200
    print("\ndecoder verdicts:", DECODED)


@fuzz_settings(120)
@given(data=wav_files(), endpoint=st.sampled_from(["chat", "upload"]))
def test_fuzzed_wav_headers_through_the_server(fuzz_connection: RawConnection, data, endpoint):
    started = time.monotonic()
    if endpoint == "chat":
        body, content_type = chat_json(data), "application/json"
        path = "/v1/chat/completions"
    else:
        body, content_type = multipart({"model": TINY}, data)
        path = "/v1/audio/transcriptions"
    response = fuzz_connection.request("POST", path, body, {"Content-Type": content_type})
    check_answer(response)
    assert time.monotonic() - started < REQUEST_BOUND
