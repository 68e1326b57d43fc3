"""Decode any common audio container from memory into 16 kHz mono float32 samples.

PyAV (FFmpeg's libraries, no ffmpeg binary) probes the bytes themselves, so a clip labelled
`audio/wav` that is really mp3 still decodes. Decoding runs as a stream of chunks and stops as
soon as the configured duration is exceeded, so a small compressed file that expands to hours of
audio costs neither the time nor the memory of decoding it all.
"""

from __future__ import annotations

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
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        total = 0
        bad_packets = 0
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
                    for out in resampler.resample(cast(av.AudioFrame, frame)):
                        chunk = _to_mono_float(out)
                        total += chunk.shape[0]
                        if max_samples is not None and total > max_samples:
                            raise _too_long(max_seconds)
                        yield chunk
            for out in resampler.resample(None):
                chunk = _to_mono_float(out)
                total += chunk.shape[0]
                if max_samples is not None and total > max_samples:
                    raise _too_long(max_seconds)
                yield chunk
        except (av.FFmpegError, ValueError, OSError) as exc:
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
