"""Long recordings: harken's streamed transcription vs the raw faster-whisper call, same file.

Recordings, made in a temporary folder from the speech set:

- `--minutes N`: the English clips, the 159 s sonnet reading among them, joined with pauses of
  0.6-25 s, repeated in new orders until the file is N minutes long (FLAC).
- `--turns`: the short-pause, many-speaker recording: every English clip but the sonnets,
  each levelled to -23 dB, in three shuffled orders, 0.5-2 s apart, as Opus at 32 kbps
  (speakers taking turns, where Whisper reading a window of several speakers loses a turn).
- `--levels`: twelve clips 1 s apart, every second one 25 dB quieter (FLAC).
- `--phone`: the same clips as `--turns` in two shuffled orders over a telephone line
  (300-3400 Hz, hiss under everything), 0.3-1.2 s apart, as MP3 at 24 kbps: speech to which
  Silero VAD gives low probabilities.
- `--background [DB ...]`: forty English clips 0.4-1.5 s apart over talk in the background that
  never stops (the other clips, 18 dB under the speaker, or each DB given), FLAC: only the
  speaker is in the reference.
- `--noise [DB ...]`: every English clip but the sonnets at -26 to -20 dB, 0.5-2 s apart, over
  steady noise (a dull hiss) 8 dB under -23 dB, or each DB given, as Opus at 32 kbps: VAD takes
  the pauses, full of noise at the speech's level, for sound to read.
- `--later S [S ...]`: the `--background` and `--noise` files built once for each S, their
  first clip S seconds in (the voices behind or the noise alone before it). Whisper's windows
  fall elsewhere, and over voices behind or noise its close calls go another way: the summary
  then gives each kind's WER averaged over the starts, which is what a change is judged on.
- `--orders N`: the `--background` and `--noise` files also built in N - 1 more ways (another
  clip order, other pauses, levels and noise for each), at each start. Moving the start moves
  the raw engine's windows, but harken cuts its pieces at the same pauses: the other builds are
  where a gap that holds at every start is told from one recording's close calls.

Each is transcribed three ways, each in a fresh process so that peak memory is its own:

- harken: `harken serve` as a subprocess, the file uploaded to /v1/audio/transcriptions with
  stream=true; time to the first text delta and to the end; CPU seconds; the server's peak RSS
  (VmHWM in /proc) against its RSS once the model is loaded.
- raw: `WhisperModel(...).transcribe(path)` in a subprocess, as its README shows it (the whole
  file decoded to float32, Whisper's sequential windows); time to the first segment and to the
  end; CPU seconds; peak RSS.
- raw+vad: the same with `vad_filter=True` (faster-whisper's own VAD pass).

Prints a table and the ratios harken/raw. Not a test: it takes minutes.

    .venv/bin/python benchmarks/long_audio.py [--model whisper-base] [--minutes 10 60]
        [--turns] [--levels] [--phone] [--background [DB ...]] [--noise [DB ...]]
        [--later S ...] [--orders N] [--harken-only] [--no-vad-row] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.conftest import Clip, free_port, wait_healthy  # noqa: E402

SAMPLE_RATE = 16_000
GAPS = (1.0, 8.0, 0.6, 18.0, 2.5, 12.0, 1.5, 25.0, 5.0, 15.0)


def english_clips() -> list[dict]:
    items = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    return [item for item in items if item["language"] == "en"]


def make_recording(
    minutes: float, folder: Path, sparse: bool, clip_count: int | None = None
) -> tuple[Path, str, float]:
    """A FLAC file of at least `minutes`, its reference text and its duration in seconds.

    `sparse`: the clips once, with the pauses stretched to fill the length (a long meeting
    with little talk: cheap to transcribe, the same decoding and memory as a full one)."""
    import av

    from harken.audio import decode_audio

    clips = english_clips()[:clip_count]
    decoded = {c["id"]: decode_audio((SPEECH / c["path"]).read_bytes()) for c in clips}
    rng = np.random.default_rng(4)
    speech = sum(len(samples) for samples in decoded.values()) / SAMPLE_RATE
    pauses = sum(GAPS[i % len(GAPS)] for i in range(len(clips)))
    stretch = max(1.0, (minutes * 60 - speech - 1) / pauses) if sparse else 1.0
    path = folder / f"long-{minutes:g}min{'-sparse' if sparse else ''}-{len(clips)}clips.flac"
    references: list[str] = []
    total = 0
    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")

        def write(samples: np.ndarray) -> None:
            nonlocal total
            pcm = np.rint(np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                out.mux(packet)
            total += pcm.shape[1]

        def pause(seconds: float) -> None:
            write(rng.normal(0.0, 0.002, int(seconds * SAMPLE_RATE)).astype(np.float32))

        pause(1.0)
        round_ = 0
        while total < minutes * 60 * SAMPLE_RATE:
            order = clips if round_ == 0 else [clips[i] for i in rng.permutation(len(clips))]
            for index, clip in enumerate(order):
                write(decoded[clip["id"]])
                references.append(clip["text"])
                pause(GAPS[(index + round_) % len(GAPS)] * stretch)
                if total >= minutes * 60 * SAMPLE_RATE:
                    break
            round_ += 1
        for packet in stream.encode(None):
            out.mux(packet)
    return path, " ".join(references), total / SAMPLE_RATE


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_harken(path: Path, model: str, home: Path) -> dict:
    port = free_port()
    env = {
        **os.environ,
        "HARKEN_HOME": str(home),
        "HARKEN_PRELOAD": model,
        "HARKEN_DEFAULT_MODEL": model,
        "HARKEN_MAX_UPLOAD_MB": "2048",
        "HARKEN_MAX_AUDIO_SECONDS": str(4 * 3600),
        "HARKEN_REQUEST_TIMEOUT_SECONDS": "0",
    }
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("harken")), "serve", "--port", str(port),
         "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, lambda: server.poll() is None, timeout=300)
        loaded_rss, _ = peak_rss_mb(server.pid)
        cpu_before = cpu_seconds(server.pid)
        text = ""
        first = None
        started = time.monotonic()
        with (
            path.open("rb") as f,
            httpx.stream(
                "POST", f"{url}/v1/audio/transcriptions",
                files={"file": (path.name, f, "audio/flac")},
                data={"model": model, "language": "en", "stream": "true"},
                timeout=None,
            ) as response,
        ):  # fmt: skip
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                if event.get("type") == "transcript.text.delta" and first is None:
                    first = time.monotonic() - started
                if event.get("type") == "transcript.text.done":
                    text = event["text"]
        total = time.monotonic() - started
        _, peak = peak_rss_mb(server.pid)
        return {"total": total, "first": first, "peak_mb": peak, "loaded_mb": loaded_rss,
                "cpu": cpu_seconds(server.pid) - cpu_before, "text": text}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)


def run_raw(path: Path, model: str, home: Path, vad: bool = False) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--raw-child", str(path), "--model", model, "--home", str(home),
         *(["--raw-vad"] if vad else [])],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def raw_child(path: Path, model: str, home: Path, vad: bool) -> None:
    """The raw call, in its own process: faster-whisper as its README uses it."""
    from faster_whisper import WhisperModel

    from harken.catalog import Catalog
    from harken.config import Settings
    from harken.engine.whisper import pick_compute_type, pick_device

    settings = Settings(home=home)
    weights = Catalog(settings).resolve(model).weights(settings)
    device = pick_device(settings.device)
    whisper = WhisperModel(
        str(weights), device=device, compute_type=pick_compute_type(device, "default"),
        cpu_threads=settings.cpu_threads or os.cpu_count() or 1,
    )  # fmt: skip
    loaded, _ = peak_rss_mb(os.getpid())
    cpu_before = cpu_seconds(os.getpid())
    started = time.monotonic()
    segments, _info = whisper.transcribe(
        str(path), language="en", beam_size=settings.beam_size, vad_filter=vad
    )
    first = None
    texts = []
    for segment in segments:
        if first is None and segment.text.strip():
            first = time.monotonic() - started
        texts.append(segment.text)
    total = time.monotonic() - started
    _, peak = peak_rss_mb(os.getpid())
    print(json.dumps({"total": total, "first": first, "peak_mb": peak, "loaded_mb": loaded,
                      "cpu": cpu_seconds(os.getpid()) - cpu_before,
                      "text": "".join(texts).strip()}))  # fmt: skip


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    from tests.conftest import normalize_text

    return float(jiwer.wer(normalize_text(reference), normalize_text(hypothesis)))


def shared_clips() -> dict[str, Clip]:
    items = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    return {
        i["id"]: Clip(i["id"], SPEECH / i["path"], i["text"], i["language"], i["duration_s"])
        for i in items
    }


def make_turns(folder: Path) -> tuple[Path, str, float]:
    """Every English clip but the sonnets, levelled, in three shuffled orders, 0.5-2 s apart,
    as Opus 32 kbps (built the way tests/test_hard_audio.py builds its shorter one)."""
    from tests.test_hard_audio import build

    english = [c for c in shared_clips().values()
               if c.language == "en" and c.id != "librivox_shakespeare_sonnets_1-3"]  # fmt: skip
    rng = np.random.default_rng(21)
    order = [english[i] for _ in range(3) for i in rng.permutation(len(english))]
    built = build(folder / "turns.ogg", order, rng.uniform(0.5, 2.0, len(order)).tolist())
    return built.path, " ".join(c.text for c in built.clips), recording_seconds(built.path)


def make_levels(folder: Path) -> tuple[Path, str, float]:
    """Twelve clips of 3-14 s, 1 s apart, every second one 25 dB quieter."""
    from tests.test_hard_audio import build

    english = [c for c in shared_clips().values() if c.language == "en" and 3 < c.duration < 14]
    built = build(folder / "levels.flac", english[:12], [1.0] * 12, quiet_every=2)
    return built.path, " ".join(c.text for c in built.clips), recording_seconds(built.path)


def make_phone(folder: Path) -> tuple[Path, str, float]:
    """The English clips but the sonnets in two shuffled orders over a telephone line
    (300-3400 Hz, hiss under everything), 0.3-1.2 s apart, as MP3 24 kbps."""
    from tests.test_hard_audio import build

    english = [c for c in shared_clips().values()
               if c.language == "en" and c.id != "librivox_shakespeare_sonnets_1-3"]  # fmt: skip
    rng = np.random.default_rng(22)
    order = [english[i] for _ in range(2) for i in rng.permutation(len(english))]
    pauses = rng.uniform(0.3, 1.2, len(order)).tolist()
    built = build(folder / "phone.mp3", order, pauses, phone=True)
    return built.path, " ".join(c.text for c in built.clips), recording_seconds(built.path)


def _build_rng(seed: int, order: int) -> np.random.Generator:
    """The random numbers of one build of a recording: `order` 0 is the benchmark's as it
    always was; each other gets its own clip order, pauses, levels and noise."""
    return np.random.default_rng(seed if order == 0 else (seed, order))


def _order(order: int) -> str:
    """The part of a recording's row name that says which build it is (counted from 1)."""
    return f", order {order + 1}" if order else ""


def _suffix(order: int) -> str:
    """The same in a file's name."""
    return f"-order{order + 1}" if order else ""


def make_background(
    folder: Path, under_db: float = 18.0, later: float = 0.0, order: int = 0
) -> tuple[Path, str, float]:
    """Forty English clips at -24 dB, 0.4-1.5 s apart, over a bed of the other clips `under_db`
    under them (-42 dB by default) that never stops (talk in the background), FLAC; the first
    clip starts `later` seconds in, the bed alone before it. The reference is the speaker's
    text. `order`: which build (`_build_rng`)."""
    from harken.audio import decode_audio
    from tests.test_hard_audio import encode, levelled

    english = [c for c in shared_clips().values()
               if c.language == "en" and c.id != "librivox_shakespeare_sonnets_1-3"]  # fmt: skip
    rng = _build_rng(23, order)
    front = [english[i] for i in rng.permutation(len(english))][:40]
    parts = [np.zeros(int(later * SAMPLE_RATE), dtype=np.float32)]
    for clip, pause in zip(front, rng.uniform(0.4, 1.5, len(front)), strict=True):
        parts += [levelled(decode_audio(clip.bytes()), -24.0),
                  np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)]  # fmt: skip
    voices = np.concatenate(parts)
    bed = np.concatenate([levelled(decode_audio(c.bytes()), -24.0 - under_db) for c in english])
    bed = np.tile(bed, voices.shape[0] // bed.shape[0] + 1)[: voices.shape[0]]
    path = folder / f"background-{under_db:g}dB-{later:g}s{_suffix(order)}.flac"
    encode(voices + bed, path)
    return path, " ".join(c.text for c in front), recording_seconds(path)


def make_noise(
    folder: Path, under_db: float = 8.0, later: float = 0.0, order: int = 0
) -> tuple[Path, str, float]:
    """Every English clip but the sonnets at -26 to -20 dB, 0.5-2 s apart, over steady noise
    (white noise averaged over 8 samples: a dull hiss) `under_db` under -23 dB, as Opus; the
    first clip starts `later` seconds in, the noise alone before it. `order`: which build."""
    from harken.audio import decode_audio
    from tests.test_hard_audio import encode, hiss, levelled

    english = [c for c in shared_clips().values()
               if c.language == "en" and c.id != "librivox_shakespeare_sonnets_1-3"]  # fmt: skip
    rng = _build_rng(24, order)
    clips_in_order = [english[i] for i in rng.permutation(len(english))]
    parts = [np.zeros(int(later * SAMPLE_RATE), dtype=np.float32)]
    for clip in clips_in_order:
        parts += [levelled(decode_audio(clip.bytes()), rng.uniform(-26.0, -20.0)),
                  np.zeros(int(rng.uniform(0.5, 2.0) * SAMPLE_RATE), dtype=np.float32)]  # fmt: skip
    clips = np.concatenate(parts)
    path = folder / f"noise-{under_db:g}dB-{later:g}s{_suffix(order)}.ogg"
    encode(clips + hiss(clips.shape[0], -23.0 - under_db, rng), path)
    return path, " ".join(c.text for c in clips_in_order), recording_seconds(path)


def _late(seconds: float) -> str:
    """The part of a recording's row name that says how late its first clip starts."""
    return f", {seconds:g} s later" if seconds else ""


def recording_seconds(path: Path) -> float:
    from harken.audio import decode_pcm16

    return decode_pcm16(path.read_bytes()).shape[0] / SAMPLE_RATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--minutes", type=float, nargs="*", default=[10.0, 60.0])
    parser.add_argument("--turns", action="store_true", help="the short-pause, many-speaker file")
    parser.add_argument("--levels", action="store_true", help="the level-change file")
    parser.add_argument("--phone", action="store_true", help="the telephone-band file")
    parser.add_argument(
        "--background",
        type=float,
        nargs="*",
        metavar="DB",
        help="a speaker over talk in the background, DB under the speaker (default 18)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        nargs="*",
        metavar="DB",
        help="clips over steady noise, DB under them (default 8)",
    )
    parser.add_argument(
        "--later",
        type=float,
        nargs="+",
        default=[0.0],
        metavar="S",
        help="build the --background and --noise files once for each S, their first clip S "
        "seconds in (default 0): where the windows fall moves, and with it Whisper's close calls",
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=1,
        metavar="N",
        help="build the --background and --noise files in N ways (clip order, pauses, levels, "
        "noise; default 1, the benchmark's own), each at every --later start",
    )
    parser.add_argument("--harken-only", action="store_true", help="skip the raw calls")
    parser.add_argument("--no-vad-row", action="store_true", help="skip raw with vad_filter")
    parser.add_argument(
        "--sparse", action="store_true", help="the clips once, pauses stretched to the length"
    )
    parser.add_argument(
        "--clips", type=int, default=None, help="use only the first N English clips"
    )
    parser.add_argument(
        "--keep", type=Path, help="write the recordings and each engine's text here, and keep them"
    )
    parser.add_argument("--home", type=Path, default=None, help="HARKEN_HOME (model cache)")
    parser.add_argument("--raw-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--raw-vad", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.orders < 1:
        parser.error("--orders: at least 1")

    from harken.config import Settings

    home = args.home or Settings().home
    if args.raw_child:
        raw_child(args.raw_child, args.model, home, args.raw_vad)
        return
    folder = args.keep or Path(tempfile.mkdtemp(prefix="harken-long-"))
    folder.mkdir(parents=True, exist_ok=True)
    recordings = []
    if args.turns:
        recordings.append(("turns", *make_turns(folder)))
    if args.levels:
        recordings.append(("levels", *make_levels(folder)))
    if args.phone:
        recordings.append(("phone", *make_phone(folder)))
    # `--background` alone: the 18 dB recording; None: not asked for.
    for under_db in [18.0] if args.background == [] else args.background or []:
        name = "background" if under_db == 18.0 else f"background {under_db:g} dB"
        for order, later in itertools.product(range(args.orders), args.later):
            built = make_background(folder, under_db, later, order)
            recordings.append((name + _order(order) + _late(later), *built))
    for under_db in [8.0] if args.noise == [] else args.noise or []:
        name = f"noise {under_db:g} dB"
        for order, later in itertools.product(range(args.orders), args.later):
            built = make_noise(folder, under_db, later, order)
            recordings.append((name + _order(order) + _late(later), *built))
    for minutes in args.minutes:
        path, reference, duration = make_recording(minutes, folder, args.sparse, args.clips)
        name = f"{duration / 60:.1f} min{' sparse' if args.sparse else ''}"
        recordings.append((name, path, reference, duration))
    rows = []
    for name, path, reference, duration in recordings:
        print(f"# {name}: {path.name}, {duration / 60:.1f} min, "
              f"{path.stat().st_size / 2**20:.1f} MB", flush=True)  # fmt: skip
        results = {"harken": run_harken(path, args.model, home)}
        if not args.harken_only:
            results["raw"] = run_raw(path, args.model, home)
            if not args.no_vad_row:
                results["raw+vad"] = run_raw(path, args.model, home, vad=True)
        for engine, r in results.items():
            r["wer"] = word_error_rate(reference, r["text"])
            if args.keep:  # each text beside its recording, to compare runs word by word
                text_name = f"{path.stem}.{engine.replace('+', '-')}.txt"
                (folder / text_name).write_text(r["text"] + "\n")
            rows.append((name, engine, duration, r))
            print(f"  {engine}: {r['total']:.1f} s, first text {r['first'] or 0:.1f} s, "
                  f"CPU {r['cpu']:.0f} s, peak {r['peak_mb']:.0f} MB, WER {r['wer']:.3f}",
                  flush=True)  # fmt: skip

    print(f"\nmodel {args.model}, {os.cpu_count()} CPU cores")
    header = ("file", "engine", "total s", "RTF", "first text s", "first/total", "CPU s",
              "peak RSS MB", "RSS after load MB", "WER")  # fmt: skip
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for name, engine, duration, r in rows:
        first = r["first"] or 0.0
        print(" | ".join([
            name, engine, f"{r['total']:.1f}", f"{r['total'] / duration:.3f}",
            f"{first:.1f}", f"{first / r['total']:.1%}", f"{r['cpu']:.0f}", f"{r['peak_mb']:.0f}",
            f"{r['loaded_mb']:.0f}", f"{r['wer']:.3f}",
        ]))  # fmt: skip
    by_file: dict[str, dict[str, dict]] = {}
    for name, engine, _, r in rows:
        by_file.setdefault(name, {})[engine] = r
    for name, pair in by_file.items():
        if "raw" in pair:
            h, w = pair["harken"], pair["raw"]
            print(
                f"{name}: harken/raw total {h['total'] / w['total']:.2f}, CPU "
                f"{h['cpu'] / w['cpu']:.2f}, "
                f"first text {(h['first'] or 0) / (w['first'] or 1):.2f}, "
                f"peak RSS {h['peak_mb'] / w['peak_mb']:.2f}, WER {h['wer']:.3f} vs {w['wer']:.3f}"
            )
    if len(args.later) * args.orders > 1 and not args.harken_only:
        _print_over_starts(by_file)


def _print_over_starts(by_file: dict[str, dict[str, dict]]) -> None:
    """For each recording built at several starts (`--later`) or in several ways (`--orders`):
    harken's and the raw engine's times summed and WERs averaged over the builds. One build's
    WER gap can be where the windows happen to fall (over voices 13 dB behind, the raw engine's
    WER ranged over 9.8-18.0% from one start to another within 3.1 s); the mean is what a
    change is judged on."""
    starts: dict[str, list[dict[str, dict]]] = {}
    for name, pair in by_file.items():
        if "raw" in pair:
            starts.setdefault(name.split(", ")[0], []).append(pair)
    for family, pairs in starts.items():
        if len(pairs) < 2:
            continue
        h_total = sum(p["harken"]["total"] for p in pairs)
        w_total = sum(p["raw"]["total"] for p in pairs)
        h_wer = sum(p["harken"]["wer"] for p in pairs) / len(pairs)
        w_wer = sum(p["raw"]["wer"] for p in pairs) / len(pairs)
        print(f"{family}, over {len(pairs)} builds: harken/raw total {h_total / w_total:.2f}, "
              f"mean WER {h_wer:.3f} vs {w_wer:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
