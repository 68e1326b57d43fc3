"""Real-time factor of one request through harken vs the raw faster-whisper call.

Same model, same settings, same audio, same run, alternating, so that the machine's noise hits
both sides alike. Prints a table and the ratio server/raw (1.00 = no overhead).

    .venv/bin/python benchmarks/rtf.py [--model whisper-base] [--clip ID ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech"
sys.path.insert(0, str(ROOT / "src"))

from harken.audio import decode_audio  # noqa: E402
from harken.catalog import Catalog  # noqa: E402
from harken.config import Settings  # noqa: E402
from harken.engine.whisper import pick_compute_type, pick_device  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--clip", action="append", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    clip_ids = args.clip or ["jfk_inaugural_1961", "librivox_shakespeare_sonnets_1-3"]
    manifest = {
        item["id"]: item
        for item in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines())
    }

    home = Path(tempfile.mkdtemp(prefix="harken-bench-"))
    settings = Settings(home=home)
    weights = Catalog(settings).resolve(args.model).weights(settings)
    device = pick_device(settings.device)
    compute_type = pick_compute_type(device, settings.compute_type)
    threads = settings.cpu_threads or os.cpu_count() or 1

    from faster_whisper import WhisperModel

    raw_model = WhisperModel(
        str(weights), device=device, compute_type=compute_type, cpu_threads=threads
    )

    port = free_port()
    env = {
        **os.environ,
        "HARKEN_HOME": str(home),
        "HARKEN_PRELOAD": args.model,
        "HARKEN_DEFAULT_MODEL": args.model,
    }
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("harken")),
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

        print(
            f"model {args.model}, {device}/{compute_type}, {threads} threads, "
            f"beam {settings.beam_size}, {args.repeat} runs each (median)\n"
        )
        header = (
            f"{'clip':36} {'audio s':>8} {'raw s':>8} {'raw RTF':>8} "
            f"{'server s':>9} {'srv RTF':>8} {'srv/raw':>8}"
        )
        print(header)
        print("-" * len(header))
        ratios = []
        for clip_id in clip_ids:
            path = SPEECH / manifest[clip_id]["path"]
            data = path.read_bytes()
            audio = decode_audio(data)
            duration = audio.shape[0] / 16000
            raw_times, server_times = [], []
            for _ in range(args.repeat):
                started = time.perf_counter()
                segments, _info = raw_model.transcribe(
                    audio, beam_size=settings.beam_size, vad_filter=False
                )
                raw_text = "".join(s.text for s in segments)
                raw_times.append(time.perf_counter() - started)

                import base64

                body = {
                    "model": args.model,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "input_audio",
                                    "input_audio": {
                                        "data": "data:audio/wav;base64,"
                                        + base64.b64encode(data).decode()
                                    },
                                }
                            ],
                        }
                    ],
                }
                started = time.perf_counter()
                response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=3600)
                response.raise_for_status()
                server_times.append(time.perf_counter() - started)
            raw_s, server_s = statistics.median(raw_times), statistics.median(server_times)
            ratios.append(server_s / raw_s)
            print(
                f"{clip_id:36} {duration:8.1f} {raw_s:8.2f} {duration / raw_s:7.1f}x "
                f"{server_s:9.2f} {duration / server_s:7.1f}x {server_s / raw_s:8.2f}"
            )
            assert raw_text.strip(), "raw engine returned nothing"
        print(f"\nserver time / raw time, geometric mean: {statistics.geometric_mean(ratios):.2f}")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
