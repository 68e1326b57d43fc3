"""Decode any common audio container from memory into 16 kHz mono float32 samples.

PyAV (FFmpeg's libraries, no ffmpeg binary) probes the bytes themselves, so a clip labelled
`audio/wav` that is really mp3 still decodes. Decoding runs as a stream of chunks and stops as
soon as the configured duration is exceeded, so a small compressed file that expands to hours of
audio costs neither the time nor the memory of decoding it all.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import cast

import av
import numpy as np

from harken.engine.segmentation import SAMPLE_RATE  # the rate the engine reads: one definition
from harken.errors import AudioTooLong, HarkenError, InvalidAudio

log = logging.getLogger(__name__)


def iter_audio_chunks(data: bytes, *, max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """Yield the audio in `data` as float32 mono chunks at 16 kHz, in order.

    Raises InvalidAudio when the bytes hold no decodable audio stream, AudioTooLong as soon as the
    decoded audio passes `max_seconds`; nothing else. The bytes come from anyone, and PyAV on
    hostile input has raised more than FFmpeg's errors (an `AttributeError` from a stream whose
    codec could not be opened): whatever it raises is the file's fault, so a client always gets
    a 400, never a 500.
    """
    try:
        yield from _decode_chunks(data, max_seconds)
    except HarkenError:
        raise
    except Exception as exc:
        log.info("audio refused: the decoder raised %s: %s", type(exc).__name__, exc)
        raise InvalidAudio(
            "The audio could not be decoded: its format or codec is not supported, or the file "
            "is damaged."
        ) from exc


def _decode_chunks(data: bytes, max_seconds: float | None) -> Iterator[np.ndarray]:
    if not data:
        raise InvalidAudio("The audio is empty (0 bytes).")
    max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise InvalidAudio(
            "The audio could not be decoded: the bytes are not a supported audio format "
            "(wav, mp3, flac, ogg/opus, m4a/aac, webm)."
        ) from exc
    with container:
        stream = next(iter(container.streams.audio), None)
        if stream is None:
            raise InvalidAudio("The file has no audio stream.")
        if stream.codec_context is None:
            # FFmpeg found a stream but has no decoder for it (a WAV format tag such as 0xFFFE
            # with a bad extension, or 0 bits per sample): PyAV's stream then has no rate at all.
            raise InvalidAudio(
                "The audio could not be decoded: its codec is not supported or its header is "
                "damaged (e.g. a WAV format tag or bit depth that no decoder reads)."
            )
        rate = stream.sample_rate or 0
        if rate < _MIN_SAMPLE_RATE:
            # A header claiming e.g. 1 Hz turns 32 KB of PCM into hours once resampled: a bomb.
            raise InvalidAudio(
                f"The audio's sample rate ({rate} Hz) is too low for speech: at least "
                f"{_MIN_SAMPLE_RATE} Hz is needed."
            )
        if rate > _MAX_SAMPLE_RATE:
            # FFmpeg's resampler builds its filter bank for the ratio first: a header claiming
            # 150,979,391 Hz cost 4-6 s of CPU and 1.2 GB before the file was found damaged.
            raise InvalidAudio(
                f"The audio's sample rate ({rate} Hz) is not a real one: at most "
                f"{_MAX_SAMPLE_RATE} Hz is read."
            )
        resampled = _Resampled()
        total = 0
        bad_packets = 0

        def counted(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
            nonlocal total
            for chunk in chunks:
                total += chunk.shape[0]
                if max_samples is not None and total > max_samples:
                    raise _too_long(max_seconds)
                yield chunk

        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    # One damaged packet should not lose the rest of a recording.
                    bad_packets += 1
                    if bad_packets > 100 and total == 0:
                        break
                    continue
                for frame in frames:
                    yield from counted(resampled.add(cast(av.AudioFrame, frame)))
            yield from counted(resampled.rest())
        except (av.FFmpegError, ValueError, OSError) as exc:
            with contextlib.suppress(av.FFmpegError, ValueError, OSError):
                yield from counted(resampled.rest())  # what was decoded before the damage
            if total == 0:
                raise InvalidAudio("The audio could not be decoded: the file is damaged.") from exc
            log.info("audio stream ended early after %.2f s: %s", total / SAMPLE_RATE, exc)
        if total == 0:
            raise InvalidAudio("The audio contains no samples (empty or damaged file).")


def decode_audio(data: bytes, *, max_seconds: float | None = None) -> np.ndarray:
    """All of `data` decoded to one float32 array of 16 kHz mono samples."""
    chunks = list(iter_audio_chunks(data, max_seconds=max_seconds))
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def decode_pcm16(data: bytes, *, max_seconds: float | None = None) -> np.ndarray:
    """All of `data` decoded to one int16 array of 16 kHz mono samples.

    What the server keeps of a request's audio: half the memory of float32 (an hour is 115 MB),
    converted to float32 only a model window at a time. The samples are gathered in fixed
    blocks and copied into the result one block at a time, each freed as it is copied, so the
    peak stays near the final size instead of twice it.
    """
    blocks: list[np.ndarray | None] = []
    block = np.empty(_PCM_BLOCK, dtype=np.int16)
    used = 0
    for chunk in iter_audio_chunks(data, max_seconds=max_seconds):
        pcm = _float_to_pcm16(chunk)
        while pcm.shape[0]:
            take = min(pcm.shape[0], _PCM_BLOCK - used)
            block[used : used + take] = pcm[:take]
            used += take
            pcm = pcm[take:]
            if used == _PCM_BLOCK:
                blocks.append(block)
                block = np.empty(_PCM_BLOCK, dtype=np.int16)
                used = 0
    total = len(blocks) * _PCM_BLOCK + used
    out = np.empty(total, dtype=np.int16)
    for index in range(len(blocks)):
        full = blocks[index]
        assert full is not None
        out[index * _PCM_BLOCK : (index + 1) * _PCM_BLOCK] = full
        blocks[index] = None  # each block is freed once copied: no double-size peak
    out[total - used :] = block[:used]
    return out


_MIN_SAMPLE_RATE = 2000  # Hz; telephony is 8000, nothing real is slower
_MAX_SAMPLE_RATE = 768_000  # Hz; the fastest audio interfaces; an awkward rate here costs 0.04 s
_PCM_BLOCK = 1 << 20  # samples (65 s, 2 MiB) per storage block while decoding
# Decoded audio is resampled this many samples at a time, and handed on a second at a time, not
# frame by frame (a codec's frame can be 20 ms: Opus): each frame cost Python calls of its own.
# 11 minutes of Opus (33,398 frames) took 4.0 s to decode, the same samples 1.4 s so; the
# decoder alone takes 1.1 s (`benchmarks/decode.py`).
_RESAMPLED_GROUP = 48_000


class _Resampled:
    """Decoded frames, gathered and resampled to 16 kHz mono float32 chunks of a second."""

    def __init__(self) -> None:
        self._fifo = av.AudioFifo()
        self._kind: tuple[str, str, int] | None = None
        self._resampler = av.AudioResampler(
            format="flt", layout="mono", rate=SAMPLE_RATE, frame_size=SAMPLE_RATE
        )

    def add(self, frame: av.AudioFrame) -> Iterator[np.ndarray]:
        # A damaged file's frame can change layout midway (an MP3 frame header read as stereo);
        # the FIFO would take it as mono. Like the resampler, it ends the stream there.
        kind = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._kind is not None and kind != self._kind:
            raise ValueError(f"a frame of {kind} in a stream of {self._kind}")
        self._kind = kind
        frame.pts = None  # the FIFO checks that times follow on; only the samples count here
        self._fifo.write(frame)
        while self._fifo.samples >= _RESAMPLED_GROUP:
            yield from self._resample(self._fifo.read(_RESAMPLED_GROUP))

    def rest(self) -> Iterator[np.ndarray]:
        """What is left once the stream has ended."""
        left = self._fifo.read()
        if left is not None:
            yield from self._resample(left)
        yield from self._resample(None)

    def _resample(self, frame: av.AudioFrame | None) -> Iterator[np.ndarray]:
        for out in self._resampler.resample(frame):
            yield _to_mono_float(out)


def _float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def _to_mono_float(frame: av.AudioFrame) -> np.ndarray:
    samples = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(samples, -1.0, 1.0)


def _too_long(max_seconds: float | None) -> AudioTooLong:
    return AudioTooLong(
        f"The audio is longer than the server's limit of {max_seconds:g} seconds; "
        "split it or ask the operator to raise HARKEN_MAX_AUDIO_SECONDS."
    )
