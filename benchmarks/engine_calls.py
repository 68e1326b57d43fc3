"""What one 30-second window costs inside the engine, call by call, by batch size.

faster-whisper reads a window with three CTranslate2 calls: `encode` (the encoder pass),
`detect_language` (when no language is given) and `generate` (the beam search). This times
each one on batches of 1, 2, 4 and 8 copies of a real window, per window, so the batching
decisions in `src/harken/engine/batching.py` can be checked on any machine:

    .venv/bin/python benchmarks/engine_calls.py                    # whisper-base, every core
    .venv/bin/python benchmarks/engine_calls.py --threads 1 --compute-type int8

The last column compares each batch size with one window at a time (below 1.00: batching pays).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from conftest import load_manifest  # noqa: E402


def best_of(repeats: int, call: Callable[[], Any]) -> float:
    call()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--clip", default="jfk_inaugural_1961")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compute-type", default="float32")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache" / "harken")
    args = parser.parse_args()

    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    from harken.audio import decode_audio
    from harken.catalog import Catalog
    from harken.config import Settings

    settings = Settings(home=args.home)
    weights = Catalog(settings).resolve(args.model).weights(settings)
    model = WhisperModel(
        str(weights), device="cpu", compute_type=args.compute_type, cpu_threads=args.threads
    )
    audio = decode_audio(load_manifest()[args.clip].bytes())
    window = pad_or_trim(model.feature_extractor(audio))
    tokenizer = model.hf_tokenizer
    language = "<|en|>" if model.model.is_multilingual else None
    prompt = [
        tokenizer.token_to_id(token)
        for token in ("<|startoftranscript|>", language, "<|transcribe|>")
        if token
    ]
    print(
        f"{args.model}, {args.compute_type}, {args.threads} threads, one window of "
        f"{args.clip}; seconds per window, best of {args.repeats}"
    )
    print("| call | batch | seconds per window | × one at a time |")
    print("|---|---|---|---|")
    single: dict[str, float] = {}
    for size in [int(b) for b in args.batches.split(",")]:
        for name, per_window in time_batch(model, window, prompt, size, args.repeats).items():
            single.setdefault(name, per_window)
            print(f"| {name} | {size} | {per_window:.3f} | {per_window / single[name]:.2f} |")


def time_batch(
    model: Any, window: np.ndarray, prompt: list[int], size: int, repeats: int
) -> dict[str, float]:
    """Seconds per window of each call on a batch of `size` copies of `window`."""
    import ctranslate2

    whisper = model.model
    batch = np.ascontiguousarray(np.stack([window] * size))
    features = ctranslate2.StorageView.from_array(batch)
    encoded = whisper.encode(features, to_cpu=True)
    calls: dict[str, Callable[[], Any]] = {
        "encode": lambda: whisper.encode(features, to_cpu=True),
        "generate (beam 5)": lambda: whisper.generate(
            encoded, [prompt] * size, beam_size=5, max_length=448, suppress_blank=True
        ),
    }
    if whisper.is_multilingual:
        calls["detect_language"] = lambda: whisper.detect_language(encoded)
    return {name: best_of(repeats, call) / size for name, call in calls.items()}


if __name__ == "__main__":
    main()
