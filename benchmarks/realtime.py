"""Live transcription benchmark: Realtime API sessions against a real `harken serve` process.

For each model and each number of concurrent sessions, every session streams English clips
from ../shared/data/speech at real-time pace (100 ms appends of PCM16 24 kHz, a pause of
silence between clips) with server VAD, and the script measures:

- end of speech → `completed`: from where a clip's speech ends (by its sound level) to the
  arrival of its transcript; p50/p95 over clips. Its baseline, in the same run: the same clips
  sent to POST /v1/audio/transcriptions one at a time (time to the whole answer), p50.
- speech onset → first delta: from where a clip's speech begins to its first text.
- WER of the completed transcripts, and of the file endpoint's on the same clips.
- CPU while connected but silent: the server's CPU time (in cores) while the sessions stream
  digital silence, next to the same server idle with no session.

`--minutes M` adds one continuous session of M minutes (clips cycled, real time) and reports
the lag (end of speech → completed) in its first and last minute: it must not grow.

    .venv/bin/python benchmarks/realtime.py                       # tiny.en and base, 1 and 4
    .venv/bin/python benchmarks/realtime.py --models whisper-tiny.en --sessions "" --minutes 10

Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import SPEECH, Server, corpus_wer, percentile, pick_clips

from harken.audio import decode_pcm16

CHUNK = 0.1  # seconds of audio per append
GAP = 2.0  # seconds of silence between clips
LEAD = 1.0  # seconds of silence before the first clip


def to_pcm24(samples16: np.ndarray) -> bytes:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=24_000)
    frame = av.AudioFrame.from_ndarray(samples16.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16_000
    frames = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype("<i2").tobytes()


def speech_bounds(pcm: np.ndarray) -> tuple[float, float]:
    """Seconds where a recording's sound begins and ends (10 ms frames within 35 dB of its
    loudest)."""
    frames = pcm[: pcm.shape[0] // 160 * 160].astype(np.float32).reshape(-1, 160)
    level = 10 * np.log10((frames**2).mean(axis=1) + 1e-9)
    loud = np.flatnonzero(level > level.max() - 35)
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


@dataclass
class Placed:
    """A clip placed in a stream: where its speech begins and ends (s into the stream)."""

    clip: Any
    start: float
    end: float


@dataclass
class Program:
    audio: bytes
    placed: list[Placed]


def program(clips: list[Any], minutes: float | None = None) -> Program:
    """Clips one after another with silence between (cycled to fill `minutes`, if given)."""
    parts = [np.zeros(int(LEAD * 16_000), np.int16)]
    cursor, placed, i = LEAD, [], 0
    while True:
        clip = clips[i % len(clips)]
        i += 1
        pcm = decode_pcm16(clip.path.read_bytes())
        if minutes is not None and cursor + pcm.shape[0] / 16_000 > minutes * 60:
            break  # the stream ends within its last minute
        start, end = speech_bounds(pcm)
        placed.append(Placed(clip, cursor + start, cursor + end))
        parts += [pcm, np.zeros(int(GAP * 16_000), np.int16)]
        cursor += pcm.shape[0] / 16_000 + GAP
        if minutes is None and i >= len(clips):
            break
    return Program(to_pcm24(np.concatenate(parts)), placed)


@dataclass
class Heard:
    started_at: float = 0.0  # wall time of the stream's first sample
    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    def item(self, item_id: str) -> dict[str, Any]:
        return self.items.setdefault(item_id, {"deltas": ""})


async def session(url: str, prog: Program, model: str) -> Heard:
    heard = Heard()
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": model, "language": "en"},
                                "turn_detection": {"type": "server_vad"}}},
        }}))  # fmt: skip
        step = int(48_000 * CHUNK)
        sent_all = asyncio.Event()

        async def send() -> None:
            heard.started_at = time.monotonic()
            for n, begin in enumerate(range(0, len(prog.audio), step)):
                chunk = base64.b64encode(prog.audio[begin : begin + step]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await asyncio.sleep(max(0.0, heard.started_at + (n + 1) * CHUNK - time.monotonic()))
            sent_all.set()
            silence = base64.b64encode(bytes(step)).decode()
            while True:  # silence keeps the session alive while the last transcripts come
                await asyncio.sleep(CHUNK)
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": silence}))

        async def receive() -> None:
            async for message in ws:
                event = json.loads(message)
                kind, now = event["type"], time.monotonic()
                if kind == "error":
                    raise RuntimeError(event["error"])
                if "item_id" not in event:
                    continue
                item = heard.item(event["item_id"])
                if kind == "input_audio_buffer.speech_started":
                    item["start_ms"] = event["audio_start_ms"]
                elif kind == "input_audio_buffer.speech_stopped":
                    item["end_ms"] = event["audio_end_ms"]
                elif kind.endswith("transcription.delta"):
                    item.setdefault("first_delta", now)
                    item["deltas"] += event["delta"]
                elif kind.endswith("transcription.completed"):
                    item["completed"] = now
                    item["transcript"] = event["transcript"]

        async def finished() -> None:
            await sent_all.wait()
            while not heard.items or not all("completed" in i for i in heard.items.values()):
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(t) for t in (send(), receive(), finished())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()  # an error event or a closed socket ends the benchmark loudly
    return heard


def measures(
    prog: Program, heard: Heard
) -> list[tuple[float | None, float | None, tuple[str, str]]]:
    """Per clip: end of speech → completed, onset → first delta, and (reference, transcript)."""
    items = [i for i in heard.items.values() if "completed" in i and "end_ms" in i]
    out: list[tuple[float | None, float | None, tuple[str, str]]] = []
    for placed in prog.placed:
        # Its items: those whose speech began within its stretch (a clip may be cut in two).
        own = [
            i for i in items
            if placed.start - 0.5 <= i.get("start_ms", 0) / 1000 <= placed.end + 0.3
        ]  # fmt: skip
        if not own:
            out.append((None, None, (placed.clip.text, "")))
            continue
        last = max(own, key=lambda i: i["end_ms"])
        final = last["completed"] - (heard.started_at + placed.end)
        deltas = [i["first_delta"] for i in own if "first_delta" in i]
        first = min(deltas) - (heard.started_at + placed.start) if deltas else None
        out.append((final, first, (placed.clip.text, " ".join(i["transcript"] for i in own))))
    return out


async def sessions_at_once(url: str, progs: list[Program], model: str) -> list[Heard]:
    return list(await asyncio.gather(*(session(url, p, model) for p in progs)))


def file_baseline(
    server: Server, clips: list[Any], model: str, verbose: bool = False
) -> tuple[float, float]:
    """p50 seconds of POST /v1/audio/transcriptions on the clips, one at a time, and its WER."""
    times, pairs = [], []
    with httpx.Client(timeout=300) as client:
        for clip in clips:
            began = time.monotonic()
            response = client.post(
                f"{server.url}/v1/audio/transcriptions",
                data={"model": model, "language": "en"},
                files={"file": (clip.path.name, clip.path.read_bytes())},
            )
            response.raise_for_status()
            times.append(time.monotonic() - began)
            pairs.append((clip.text, response.json()["text"]))
            if verbose:
                print(f"  file {times[-1]:.2f} s: {pairs[-1][1]!r} (ref {clip.text!r})")
    return percentile(times, 0.5), corpus_wer(pairs)


async def silent_cpu(server: Server, url: str, sessions: int, seconds: float) -> float:
    """Server cores busy while `sessions` sessions stream digital silence at real time."""

    async def one() -> None:
        async with connect(url) as ws:
            step = int(48_000 * CHUNK)
            chunk = base64.b64encode(bytes(step)).decode()
            began = time.monotonic()
            n = 0
            while time.monotonic() - began < seconds:
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                n += 1
                await asyncio.sleep(max(0.0, began + n * CHUNK - time.monotonic()))

    cpu, wall = server.cpu_seconds(), time.monotonic()
    await asyncio.gather(*(one() for _ in range(sessions)))
    return (server.cpu_seconds() - cpu) / (time.monotonic() - wall)


def idle_cpu(server: Server, seconds: float) -> float:
    cpu, wall = server.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (server.cpu_seconds() - cpu) / (time.monotonic() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="whisper-tiny.en,whisper-base")
    parser.add_argument("--sessions", default="1,4")
    parser.add_argument("--clips", type=int, default=8, help="clips per session")
    parser.add_argument("--max-clip-seconds", type=float, default=12.0)
    parser.add_argument("--silent-seconds", type=float, default=15.0)
    parser.add_argument("--verbose", action="store_true", help="each clip's times and text")
    parser.add_argument("--minutes", type=float, default=0.0, help="a continuous session too")
    args = parser.parse_args()

    clips = pick_clips(args.max_clip_seconds, "en")
    home = Path(tempfile.gettempdir()) / "harken-bench-home"
    levels = [int(n) for n in args.sessions.split(",") if n]  # "": the continuous session only
    rows, lags = [], []
    for model in args.models.split(","):
        server = Server(model, home, {"realtime_max_sessions": "64"})
        url = server.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
        try:
            file_baseline(server, clips[:1], model)  # the first model call warms up
            idle = idle_cpu(server, 5.0)
            for sessions in levels:
                chosen = [clips[(s * 3 + i) % len(clips)] for s in range(sessions)
                          for i in range(args.clips)]  # fmt: skip
                progs = [program(chosen[s * args.clips : (s + 1) * args.clips])
                         for s in range(sessions)]  # fmt: skip

                heard = asyncio.run(sessions_at_once(url, progs, model))
                finals, firsts, pairs = [], [], []
                for prog, one in zip(progs, heard, strict=True):
                    for final, first, pair in measures(prog, one):
                        if args.verbose:
                            print(f"  final {final} first {first}: {pair[1]!r} (ref {pair[0]!r})")
                        finals += [final] if final is not None else []
                        firsts += [first] if first is not None else []
                        pairs.append(pair)
                unique = list({c.id: c for c in chosen}.values())  # the clips the sessions read
                file_p50, file_wer = file_baseline(server, unique, model, args.verbose)
                silent = asyncio.run(silent_cpu(server, url, sessions, args.silent_seconds))
                rows.append({
                    "model": model, "sessions": sessions, "utterances": len(finals),
                    "final_p50": percentile(finals, 0.5), "final_p95": percentile(finals, 0.95),
                    "file_p50": file_p50,
                    "first_p50": percentile(firsts, 0.5), "first_p95": percentile(firsts, 0.95),
                    "wer": corpus_wer(pairs), "file_wer": file_wer,
                    "silent_cpu": silent, "idle_cpu": idle,
                })  # fmt: skip
                print(row(rows[-1]), flush=True)
            if args.minutes:
                prog = program(clips, minutes=args.minutes)
                one = asyncio.run(session(url, prog, model))
                lags.append((model, lag_by_minute(prog, one)))
        finally:
            server.stop()

    print()
    print(f"machine: {os.cpu_count()} cores (shared with other work: timings are noisy)")
    if rows:
        print(HEADER)
        print("|---" * (HEADER.count("|") - 1) + "|")
        for r in rows:
            print(row(r))
    for model, by_minute in lags:
        print(f"\n{model}, one continuous session: lag (end of speech → completed) by minute")
        print("| minute | utterances | lag p50 s | lag p95 s |\n|---|---|---|---|")
        for minute, values in by_minute:
            print(
                f"| {minute + 1} | {len(values)} | {percentile(values, 0.5):.2f} "
                f"| {percentile(values, 0.95):.2f} |"
            )
        first, last = percentile(by_minute[0][1], 0.5), percentile(by_minute[-1][1], 0.5)
        print(
            f"minute {by_minute[-1][0] + 1} − minute 1 (p50): {last - first:+.2f} s "
            f"(target: at most +0.50 s)"
        )


HEADER = (
    "| model | sessions | utterances | end of speech → completed p50 / p95 s | file request p50 s "
    "| × file | onset → first delta p50 / p95 s | WER live | WER file | cores busy silent "
    "| cores busy idle |"
)


def row(r: dict[str, Any]) -> str:
    return (
        f"| {r['model']} | {r['sessions']} | {r['utterances']} "
        f"| {r['final_p50']:.2f} / {r['final_p95']:.2f} | {r['file_p50']:.2f} "
        f"| {r['final_p50'] / r['file_p50']:.2f} "
        f"| {r['first_p50']:.2f} / {r['first_p95']:.2f} "
        f"| {r['wer']:.3f} | {r['file_wer']:.3f} | {r['silent_cpu']:.3f} | {r['idle_cpu']:.3f} |"
    )


def lag_by_minute(prog: Program, heard: Heard) -> list[tuple[int, list[float]]]:
    """Each minute of the stream (from 0) with the lags of the clips whose speech ended in it."""
    minutes: dict[int, list[float]] = {}
    for placed, (final, _, _) in zip(prog.placed, measures(prog, heard), strict=True):
        if final is not None:
            minutes.setdefault(int(placed.end // 60), []).append(final)
    return sorted(minutes.items())


if __name__ == "__main__":
    assert SPEECH.is_dir(), f"the speech set is missing: {SPEECH}"
    main()
