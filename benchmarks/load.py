"""Load benchmark: many clients at once against a real harken server on loopback.

For each server configuration and each number of concurrent clients, a bounded load (a fixed
number of requests, and a time cap) of chat-completion requests on clips from the speech set;
prints throughput (audio seconds per wall second), p50/p95 latency, errors, 429s, word error
rate and the server's peak RSS, next to the raw engine (faster-whisper called directly, one
clip after another, same model and options) on the same clips in the same run, before and
after the servers; the faster of its two runs is the baseline.

    .venv/bin/python benchmarks/load.py                        # base model, default settings
    .venv/bin/python benchmarks/load.py --config "" --config batch_size=1   # and plain threads
    .venv/bin/python benchmarks/load.py --raw-reuse-memory     # raw engine with harken's malloc

Each `--config` is one server (comma-separated HARKEN_* settings without the prefix); with none,
the server's defaults. Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from conftest import free_port, load_manifest, wait_healthy, wer  # noqa: E402


@dataclass
class Outcome:
    clip: Any
    status: int
    latency: float
    text: str = ""


def pick_clips(max_seconds: float, language: str) -> list[Any]:
    speech = load_manifest(SPEECH).values()
    clips = [c for c in speech if c.duration <= max_seconds and c.language == language]
    return sorted(clips, key=lambda c: c.id)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """Word error rate over all clips together (a clip's weight is its length)."""
    return wer(" ".join(ref for ref, _ in pairs), " ".join(hyp for _, hyp in pairs))


# --- the raw engine
def raw_engine(model_name: str, clips: list[Any], home: Path, beam_size: int) -> dict[str, Any]:
    from faster_whisper import WhisperModel

    from harken.audio import decode_audio
    from harken.catalog import Catalog
    from harken.config import Settings

    settings = Settings(home=home)
    entry = Catalog(settings).resolve(model_name)
    model = WhisperModel(
        str(entry.weights(settings)), device="cpu", compute_type="float32",
        cpu_threads=os.cpu_count() or 1,
    )  # fmt: skip
    audios = [decode_audio(c.bytes()) for c in clips]
    model.transcribe(audios[0], beam_size=beam_size)  # warm up, as the server is warm
    pairs, latencies = [], []
    started = time.perf_counter()
    for clip, audio in zip(clips, audios, strict=True):
        t0 = time.perf_counter()
        segments, _ = model.transcribe(audio, beam_size=beam_size)
        text = "".join(s.text for s in segments).strip()
        latencies.append(time.perf_counter() - t0)
        pairs.append((clip.text, text))
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "audio": sum(c.duration for c in clips),
        "latencies": latencies,
        "wer": corpus_wer(pairs),
        "texts": {clip.id: text for clip, (_, text) in zip(clips, pairs, strict=True)},
    }


# --- the server
class Server:
    def __init__(self, model: str, home: Path, config: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
        env.update({f"HARKEN_{k.upper()}": v for k, v in config.items()})
        env.update(HARKEN_HOME=str(home), HARKEN_PRELOAD=json.dumps([model]))
        env["HARKEN_DEFAULT_MODEL"] = model
        self.process = subprocess.Popen(
            [sys.executable, "-m", "harken", "serve", "--port", str(self.port),
             "--log-level", "warning"],
            env=env,
        )  # fmt: skip
        wait_healthy(self.url, lambda: self.process.poll() is None, timeout=300)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run_level(
    server: Server, model: str, clips: list[Any], clients: int, requests: int, cap: float
) -> dict[str, Any]:
    bodies = [
        {
            "model": model,
            "messages": [
                {"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": c.data_url()}}]}
            ],
        }
        for c in clips
    ]  # fmt: skip
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while time.perf_counter() - started < cap:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                clip = clips[index % len(clips)]
                t0 = time.perf_counter()
                response = http.post(
                    f"{server.url}/v1/chat/completions", json=bodies[index % len(clips)]
                )
                latency = time.perf_counter() - t0
                text = ""
                if response.status_code == 200:
                    text = response.json()["choices"][0]["message"]["content"]
                with lock:
                    outcomes.append(Outcome(clip, response.status_code, latency, text))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = server.cpu_seconds() - cpu_before
    ok = [o for o in outcomes if o.status == 200]
    return {
        "clients": clients,
        "requests": len(outcomes),
        "wall": wall,
        "audio": sum(o.clip.duration for o in ok),
        "latencies": [o.latency for o in ok],
        "errors": sum(1 for o in outcomes if o.status not in (200, 429)),
        "rejected": sum(1 for o in outcomes if o.status == 429),
        "wer": corpus_wer([(o.clip.text, o.text) for o in ok]) if ok else float("nan"),
        "done": [o.clip for o in ok],
        "rss": server.peak_rss_mb(),
        "busy": cpu / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=0, help="per level; 0: max(clips, 4×c)")
    parser.add_argument("--cap", type=float, default=240.0, help="seconds per level")
    parser.add_argument("--max-clip-seconds", type=float, default=30.0)
    parser.add_argument("--language", default="en")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache" / "harken")
    parser.add_argument("--config", action="append", default=[], help="k=v,k=v server settings")
    parser.add_argument(
        "--raw-reuse-memory",
        action="store_true",
        help="give the raw engine the server's allocator settings too (a stricter baseline)",
    )
    args = parser.parse_args()
    if args.raw_reuse_memory:
        from harken.service.memory import keep_freed_memory

        keep_freed_memory()

    clips = pick_clips(args.max_clip_seconds, args.language)
    levels = [int(c) for c in args.clients.split(",")]
    total = sum(c.duration for c in clips)
    print(
        f"{len(clips)} clips, {total:.1f} s of audio; model {args.model}, "
        f"beam {args.beam_size}, cpus {os.cpu_count()}",
        flush=True,
    )

    def measure_raw(when: str) -> dict[str, Any]:
        result = raw_engine(args.model, clips, args.home, args.beam_size)
        result["tput"] = result["audio"] / result["wall"]
        print(
            f"raw engine, sequential ({when}): {result['tput']:.2f} audio-s/s, "
            f"p50 {percentile(result['latencies'], 0.5):.2f} s, WER {result['wer']:.3f}",
            flush=True,
        )
        return result

    # The raw engine runs before and after the servers, and the faster of the two runs is the
    # baseline: on a shared machine a slow baseline would flatter the server.
    raw = measure_raw("before")

    def raw_wer_on(done: list[Any]) -> float:
        """The raw engine's WER on the same requests (a level may finish only some clips)."""
        pairs = [(c.text, raw["texts"][c.id]) for c in done]
        return corpus_wer(pairs) if pairs else float("nan")

    def row(label: str, r: dict[str, Any]) -> str:
        tput = r["audio"] / r["wall"]
        return (
            f"| {label} | {r['clients']} | {r['requests']} | {tput:.2f} "
            f"| {tput / raw['tput']:.2f} | {percentile(r['latencies'], 0.5):.2f} "
            f"| {percentile(r['latencies'], 0.95):.2f} | {r['errors']} | {r['rejected']} "
            f"| {r['wer']:.3f} | {raw_wer_on(r['done']):.3f} | {r['busy']:.2f} | {r['rss']:.0f} |"
        )

    def single_request_ratio(r: dict[str, Any]) -> str:
        """One client through every clip once: its time over the raw engine's on the same clips."""
        if r["clients"] != 1 or r["requests"] != len(clips) or r["errors"] or r["rejected"]:
            return ""
        return f"{sum(r['latencies']) / sum(raw['latencies']):.2f}"

    results: list[tuple[str, dict[str, Any]]] = []
    for config_text in args.config or [""]:
        config = dict(kv.split("=", 1) for kv in config_text.split(",") if kv)
        label = config_text or "defaults"
        server = Server(args.model, args.home, config)
        try:
            for clients in levels:
                requests = args.requests or max(len(clips), 4 * clients)
                r = run_level(server, args.model, clips, clients, requests, args.cap)
                results.append((label, r))
                print(row(label, r), flush=True)  # against the first baseline, for progress
        finally:
            server.stop()
    after = measure_raw("after")
    if after["tput"] > raw["tput"]:
        raw = after

    header = (
        "| config | clients | requests | throughput (audio-s/s) | × raw | p50 s | p95 s "
        "| errors | 429s | WER | raw WER, same clips | server cores busy | peak RSS MB |"
    )
    print()
    print(f"raw engine sequential: {raw['tput']:.2f} audio-s/s (the faster of two runs)")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for label, r in results:
        print(row(label, r))
    for label, r in results:
        ratio = single_request_ratio(r)
        if ratio:
            print(f"{label}: single-request time / raw engine's, same clips: {ratio}")


if __name__ == "__main__":
    main()
