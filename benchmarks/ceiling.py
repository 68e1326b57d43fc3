"""What the engine's own calls leave for the server to gain over the raw engine, per clip.

The raw engine (faster-whisper, one clip after another) is run on the clips of
`benchmarks/load.py` with every CTranslate2 call it makes recorded and timed: per clip two
encoder passes over the first window (one to detect the language, one to read it), one
language detection and the beam searches. Those very calls are then replayed as harken's
server makes them, with nothing else running: one encoder pass per window, the detection, and
the beam searches in batches. The sum is the server's time per clip if it made its calls back
to back with no overhead; the raw engine's time over it is the "× raw" that gives. What the
server gains beyond that comes from running different calls side by side (an encoder pass next
to a beam search), which these replays show only in part.

Two replays: one call at a time with every core, and one thread per call with as many calls at
once as there are cores (each kind of call in turn, so encoder passes run beside encoder passes).
The last line says how fast the batched beam searches would have to be for 2× the raw engine.

    .venv/bin/python benchmarks/ceiling.py                 # whisper-base, batches of 8
    .venv/bin/python benchmarks/ceiling.py --batch 16
    .venv/bin/python benchmarks/ceiling.py --reuse-memory  # with the server's allocator settings
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import pick_clips  # noqa: E402

CALLS = ("encode", "detect_language", "generate")


@dataclass
class Recording:
    """What the raw engine asked of CTranslate2, with the time each kind of call took."""

    seconds: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    windows: list[np.ndarray] = field(default_factory=list)  # encoder inputs the server keeps
    detections: list[np.ndarray] = field(default_factory=list)  # their encodings
    searches: list[tuple[np.ndarray, list[int], dict[str, Any]]] = field(default_factory=list)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]


class Recorder:
    """Stands in for the CTranslate2 model: times and records the three calls per window."""

    def __init__(self, model: Any, recording: Recording) -> None:
        self._model = model
        self._recording = recording

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._model, name)
        if name not in CALLS:
            return call

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = call(*args, **kwargs)
            self._recording.seconds[name] += time.perf_counter() - started
            self._recording.counts[name] += 1
            self._keep(name, args, kwargs)
            return result

        return timed

    def _keep(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kept = self._recording
        data = np.array(args[0], copy=True)
        if name == "encode":
            kept.windows.append(data)
        elif name == "detect_language":
            # faster-whisper encodes a window just to detect on it: the server reuses the
            # encoding of the window it reads instead, so that encoder pass is not replayed.
            kept.windows.pop()
            kept.detections.append(data)
        else:
            options = {k: v for k, v in kwargs.items() if k != "asynchronous"}
            kept.searches.extend((data[i : i + 1], list(p), options) for i, p in enumerate(args[1]))


def replay(
    model: Any, recording: Recording, batch: int, sot: int, at_once: int
) -> dict[str, float]:
    """Wall seconds each kind of call takes when made as the server makes it, `at_once` calls
    at a time (the model needs that many workers)."""
    import ctranslate2

    def storage(array: np.ndarray) -> Any:
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(array))

    def wall(calls: list[Callable[[], Any]]) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(at_once) as pool:
            list(pool.map(lambda call: call(), calls))
        return time.perf_counter() - started

    model.encode(storage(recording.windows[0]), to_cpu=True)  # warm up
    # Batched as engine/batching.py batches: calls that agree on the options and on where
    # <|startoftranscript|> sits in the prompt, oldest first.
    groups: dict[Any, list[tuple[np.ndarray, list[int], dict[str, Any]]]] = defaultdict(list)
    for encoded, prompt, options in recording.searches:
        position = prompt.index(sot) if sot in prompt else len(prompt)
        frozen = tuple(sorted((k, repr(v)) for k, v in options.items()))
        groups[(position, frozen)].append((encoded, prompt, options))
    searches = [items[i : i + batch] for items in groups.values()
                for i in range(0, len(items), batch)]  # fmt: skip
    return {
        "encode": wall([lambda w=w: model.encode(storage(w), to_cpu=True)
                        for w in recording.windows]),
        "detect_language": wall([lambda e=e: model.detect_language(storage(e))
                                 for e in recording.detections]),
        "generate": wall([
            lambda c=c: model.generate(
                storage(np.concatenate([encoded for encoded, _, _ in c])),
                [prompt for _, prompt, _ in c],
                **c[0][2],
            )
            for c in searches
        ]),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--batch", type=int, default=8, help="beam searches per batched call")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--max-clip-seconds", type=float, default=30.0)
    parser.add_argument("--language", default="en")
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache" / "harken")
    parser.add_argument(
        "--reuse-memory",
        action="store_true",
        help="glibc keeps freed memory, as in harken's server (for the raw engine as well)",
    )
    args = parser.parse_args()
    if args.reuse_memory:
        from harken.service.memory import keep_freed_memory

        keep_freed_memory()

    from faster_whisper import WhisperModel

    from harken.audio import decode_audio
    from harken.catalog import Catalog
    from harken.config import Settings

    settings = Settings(home=args.home)
    weights = str(Catalog(settings).resolve(args.model).weights(settings))
    cores = os.cpu_count() or 1
    clips = pick_clips(args.max_clip_seconds, args.language)
    audios = [decode_audio(c.bytes()) for c in clips]

    raw = WhisperModel(weights, device="cpu", compute_type="float32", cpu_threads=cores)
    recording = Recording()
    raw.model = Recorder(raw.model, recording)
    list(raw.transcribe(audios[0], beam_size=args.beam_size)[0])  # warm up
    recording.clear()
    started = time.perf_counter()
    for audio in audios:
        list(raw.transcribe(audio, beam_size=args.beam_size)[0])
    raw_seconds = time.perf_counter() - started
    sot = raw.hf_tokenizer.token_to_id("<|startoftranscript|>")
    n = len(clips)
    print(
        f"{n} clips ({sum(c.duration for c in clips):.1f} s), {args.model}, beam "
        f"{args.beam_size}, {cores} cores; the raw engine made "
        + ", ".join(f"{recording.counts[k]} {k}" for k in CALLS)
        + f" calls; the server would make {len(recording.windows)} encoder passes"
    )
    rows = [("raw engine, as called", {k: recording.seconds[k] for k in CALLS}, raw_seconds)]
    replays = [(f"{cores} threads a call, one call at a time", cores, 1)]
    if cores > 1:
        replays.append((f"1 thread a call, {cores} calls at a time", 1, cores))
    for label, threads, at_once in replays:
        model = WhisperModel(
            weights, device="cpu", compute_type="float32", cpu_threads=threads,
            num_workers=at_once,
        )  # fmt: skip
        seconds = replay(model.model, recording, args.batch, sot, at_once)
        label = f"server's calls, {label}, searches in batches of {args.batch}"
        rows.append((label, seconds, sum(seconds.values())))

    print("| calls made | encode | detect | beam search | s per clip | raw ÷ this |")
    print("|---|---|---|---|---|---|")
    for label, seconds, total in rows:
        print(
            f"| {label} | {seconds['encode'] / n:.3f} | {seconds['detect_language'] / n:.3f} "
            f"| {seconds['generate'] / n:.3f} | {total / n:.3f} | {raw_seconds / total:.2f} |"
        )
    _, served, _ = rows[1]
    room = raw_seconds / 2 - served["encode"] - served["detect_language"]
    print(
        f"For 2× the raw engine back to back, the beam searches would have to take "
        f"{room / n:.3f} s per clip beside that encoder pass and detection; batched, they took "
        f"{served['generate'] / n:.3f} s (alone: {recording.seconds['generate'] / n:.3f} s)."
    )


if __name__ == "__main__":
    main()
