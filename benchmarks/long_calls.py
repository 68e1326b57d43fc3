"""Where a long recording's time goes: harken's long path against the raw engine, call by call.

Both read the same recording in this process, through the same model and its batcher, with one
model worker by default, so that calls run one at a time and each call's time is its own (with
two workers an encoder pass and a beam search share the cores, and their times overlap). For
each reading it prints the windows read, the seconds spent encoding, searching (beam search)
and aligning words, and the batch sizes of the beam searches:

    .venv/bin/python benchmarks/long_calls.py --turns                # whisper-base, 11 min
    .venv/bin/python benchmarks/long_calls.py --phone --workers 2

The recordings are `long_audio.py`'s (built from ../shared/data/speech).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import long_audio  # noqa: E402


class CallClock:
    """Seconds the batcher spends in each kind of call (its own stats count the batches)."""

    def __init__(self, batcher: Any) -> None:
        self.batcher = batcher
        self.seconds: Counter[str] = Counter()
        run = batcher._run

        def timed(batch: list[Any]) -> None:
            started = time.monotonic()
            run(batch)
            self.seconds[batch[0].key[0]] += time.monotonic() - started

        batcher._run = timed

    def take(self) -> tuple[Counter[str], Counter[tuple[str, int]]]:
        """The seconds and the batches (kind, size) since the last take."""
        batches = self.batcher.stats.batches
        taken = (self.seconds.copy(), batches.copy())
        self.seconds.clear()
        batches.clear()
        return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--workers", type=int, default=1, help="model workers (server: 1)")
    parser.add_argument("--turns", action="store_true", help="the short-pause, many-speaker file")
    parser.add_argument("--phone", action="store_true", help="the telephone-band file")
    parser.add_argument("--levels", action="store_true", help="the level-change file")
    parser.add_argument("--minutes", type=float, nargs="*", default=[], help="the clips, joined")
    args = parser.parse_args()
    os.environ["HARKEN_WORKERS"] = str(args.workers)

    from harken.audio import decode_audio
    from harken.catalog import Catalog
    from harken.config import Settings
    from harken.engine import TranscriptionOptions, transcribe_long
    from harken.service.loading import load_transcriber

    folder = Path(tempfile.mkdtemp(prefix="harken-long-calls-"))
    recordings: list[tuple[str, tuple[Path, str, float]]] = []
    if args.turns:
        recordings.append(("turns", long_audio.make_turns(folder)))
    if args.phone:
        recordings.append(("phone", long_audio.make_phone(folder)))
    if args.levels:
        recordings.append(("levels", long_audio.make_levels(folder)))
    for minutes in args.minutes:
        made = long_audio.make_recording(minutes, folder, sparse=False)
        recordings.append((f"{minutes:g} min", made))
    if not recordings:
        parser.error("choose a recording: --turns, --phone, --levels or --minutes N")

    settings = Settings()
    transcriber = load_transcriber(Catalog(settings).resolve(args.model), settings)
    clock = CallClock(transcriber.batcher)
    model = transcriber._model  # faster-whisper's WhisperModel, behind the same batcher
    options = TranscriptionOptions(language="en")
    rows = []
    for name, (path, reference, _) in recordings:
        audio = decode_audio(path.read_bytes())
        samples = audio.astype("float32") / 32768.0 if audio.dtype.kind == "i" else audio
        for engine in ("harken", "raw"):
            started = time.monotonic()
            if engine == "harken":
                result = transcribe_long(transcriber, audio, options)
                text = "".join(s.text for s in result.segments)
            else:
                segments, _ = model.transcribe(samples, language="en", beam_size=5)
                text = "".join(s.text for s in segments)
            total = time.monotonic() - started
            seconds, batches = clock.take()
            searches = sorted((size, n) for (kind, size), n in batches.items()
                              if kind == "generate")  # fmt: skip
            wer = long_audio.word_error_rate(reference, text)
            rows.append((name, engine, total, batches[("encode", 1)], seconds, searches, wer))

    print(f"\nmodel {args.model}, {args.workers} worker(s), {os.cpu_count()} CPU cores")
    print("file | engine | total s | windows | encode s | search s | align s | searches "
          "(batch size × count) | WER")  # fmt: skip
    print("--- | --- | --- | --- | --- | --- | --- | --- | ---")
    for name, engine, total, windows, seconds, searches, wer in rows:
        sizes = " ".join(f"{size}×{n}" for size, n in searches)
        spent = " | ".join(f"{seconds[kind]:.1f}" for kind in ("encode", "generate", "align"))
        print(f"{name} | {engine} | {total:.1f} | {windows} | {spent} | {sizes} | {wer:.3f}")
    for index in range(0, len(rows), 2):
        ours, raw = rows[index], rows[index + 1]
        print(f"{ours[0]}: harken/raw total {ours[2] / raw[2]:.2f}, windows {ours[3]} vs {raw[3]}")


if __name__ == "__main__":
    main()
