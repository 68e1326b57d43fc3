"""Decoding uploads: harken's decoder against faster-whisper's `decode_audio`, same files.

Every request's audio is decoded whole before the model reads it, so on a long compressed
upload the decoding comes before the first text. The recordings are `long_audio.py`'s (built
from ../shared/data/speech): the turns as Opus, the telephone file as MP3, ten minutes as FLAC.
Each decoder reads each file three times in this process; the best time counts. Prints a table
and the ratio harken/faster-whisper, and whether both gave the same number of samples.

    .venv/bin/python benchmarks/decode.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import long_audio  # noqa: E402


def best_of(runs: int, decode: object, data: bytes) -> tuple[float, int]:
    """The fastest of `runs` decodings (seconds) and the number of samples."""
    times, samples = [], 0
    for _ in range(runs):
        started = time.monotonic()
        audio = decode(data)  # type: ignore[operator]
        times.append(time.monotonic() - started)
        samples = audio.shape[0]
    return min(times), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="the FLAC file's length")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from harken.engine.runtime import prepare_ctranslate2

    prepare_ctranslate2()
    from faster_whisper.audio import decode_audio as raw_decode

    from harken.audio import decode_pcm16

    folder = Path(tempfile.mkdtemp(prefix="harken-decode-"))
    files = [
        ("turns, Opus", long_audio.make_turns(folder)[0]),
        ("telephone, MP3", long_audio.make_phone(folder)[0]),
        (f"{args.minutes:g} min, FLAC", long_audio.make_recording(args.minutes, folder, False)[0]),
    ]
    print("file | audio min | MB | harken s | faster-whisper s | harken/fw | same samples")
    print("--- | --- | --- | --- | --- | --- | ---")
    for name, path in files:
        data = path.read_bytes()
        ours, ours_n = best_of(args.runs, decode_pcm16, data)
        raw, raw_n = best_of(args.runs, lambda d: raw_decode(io.BytesIO(d)), data)
        print(f"{name} | {ours_n / 16000 / 60:.1f} | {len(data) / 1e6:.1f} | {ours:.2f} | "
              f"{raw:.2f} | {ours / raw:.2f} | {ours_n == raw_n}")  # fmt: skip


if __name__ == "__main__":
    main()
