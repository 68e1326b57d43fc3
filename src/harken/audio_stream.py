"""Raw audio that arrives in pieces (the Realtime API's `input_audio_buffer.append`): PCM16 at
24 kHz, or G.711 µ-law / A-law at 8 kHz, turned into the 16 kHz int16 samples the models read.

PyAV does the work (its G.711 decoders and libswresample), with its state carried from one piece
to the next, so a stream cut into any pieces resamples as one signal.
"""

from __future__ import annotations

from typing import Any, Literal

import av
import numpy as np

from harken.engine import SAMPLE_RATE

Encoding = Literal["pcm16", "pcmu", "pcma"]

# What each encoding's bytes are: PyAV's decoder (None: raw PCM16) and the sample rate.
_CODECS: dict[str, tuple[str | None, int]] = {
    "pcm16": (None, 24_000),
    "pcmu": ("pcm_mulaw", 8_000),
    "pcma": ("pcm_alaw", 8_000),
}


class StreamDecoder:
    """One stream's decoder: `decode(bytes)` gives the 16 kHz int16 samples ready so far."""

    def __init__(self, encoding: Encoding) -> None:
        codec, self.rate = _CODECS[encoding]
        self.encoding = encoding
        self._codec: Any = None
        if codec is not None:
            self._codec = av.CodecContext.create(codec, "r")
            self._codec.sample_rate = self.rate
            self._codec.layout = "mono"
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._odd_byte = b""  # PCM16 split between two pieces
        self.bytes_in = 0

    def decode(self, data: bytes) -> np.ndarray:
        self.bytes_in += len(data)
        pcm: np.ndarray | None = None
        if self._codec is None:
            data = self._odd_byte + data
            self._odd_byte = data[len(data) // 2 * 2 :]
            pcm = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
        elif data:
            frames = self._codec.decode(av.Packet(data))
            if frames:
                pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        if pcm is None or not pcm.shape[0]:
            return np.zeros(0, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(
            pcm.astype(np.int16, copy=False).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16, copy=False) if out else np.zeros(0, np.int16)

    def seconds_in(self) -> float:
        """Seconds of audio received so far (as sent, before resampling)."""
        per_second = self.rate * (2 if self._codec is None else 1)
        return self.bytes_in / per_second
