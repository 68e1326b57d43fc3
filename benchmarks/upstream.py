"""Upstream models: what going through harken costs, and what sending long audio in pieces buys.

Two `harken serve` processes: an upstream (the model, tiny.en by default) and a front whose
models are served by that upstream (`[models.NAME] upstream = ...`, written to a TOML file).

- Overhead: short clips of the speech set, each sent directly to the upstream and through the
  front, alternately (so that both see the same load), in the MiMo chat dialect and in OpenAI's
  audio dialect; median and mean latency, and the ratio front/direct (target: at most 1.05);
  the front's own CPU time per request (from /proc), and as a share of the direct latency,
  which is the overhead that load on a shared machine does not blur.
- Long audio: a recording of `--minutes` joined from the English clips, transcribed (openai-audio,
  verbose_json) four ways: directly in one call (the upstream's own long form); through the
  front in one call (body cap and window raised so it is not cut); through the front cut at
  pauses into 30 s pieces sent one at a time; and the same pieces 4 at a time. The fastest of
  `--repeats` runs of each (in turn), the ratio to the direct call, and WER against the clips'
  texts.

Not a test: it takes minutes. On a shared machine, compare ratios from the same run only.

    .venv/bin/python benchmarks/upstream.py [--model whisper-tiny.en] [--rounds 5]
        [--minutes 5] [--clips 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.long_audio import SPEECH, cpu_seconds, english_clips, make_recording  # noqa: E402
from tests.conftest import free_port, wait_healthy  # noqa: E402


@contextmanager
def harken_serve(
    home: Path, env: dict[str, str], config: Path | None = None
) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("harken")), "serve", "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
    if config is not None:
        command += ["--config", str(config)]
    server = subprocess.Popen(command, env={**os.environ, "HARKEN_HOME": str(home), **env})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, lambda: server.poll() is None, timeout=300)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(timeout=60)


def front_config(path: Path, upstream: str, model: str) -> None:
    base = f'upstream = "{upstream}/v1"\nupstream_model = "{model}"\n'
    path.write_text(
        f'[models.up-mimo]\n{base}dialect = "mimo-chat"\n\n'
        f'[models.up-audio]\n{base}dialect = "openai-audio"\n\n'
        f'[models.up-whole]\n{base}dialect = "openai-audio"\nmax_body_mb = 500\n'
        "max_piece_seconds = 100000\n\n"
        f'[models.up-serial]\n{base}dialect = "openai-audio"\nconcurrency = 1\n\n'
        f'[models.up-pieces]\n{base}dialect = "openai-audio"\nconcurrency = 4\n'
    )


def chat(client: httpx.Client, url: str, model: str, data: bytes, mime: str) -> str:
    data_url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": data_url}}]}],
    }  # fmt: skip
    response = client.post(f"{url}/v1/chat/completions", json=body)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


def audio(client: httpx.Client, url: str, model: str, data: bytes, name: str, **form: str) -> str:
    response = client.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": (name, data)},
        data={"model": model, **form},
    )
    response.raise_for_status()
    return response.text


def overhead(
    upstream: str, front: str, front_pid: int, model: str, rounds: int, clips: int
) -> list[list[str]]:
    """Latency direct and through the front, and the front's own CPU time per request (which
    load on a shared machine does not inflate the way it does wall time)."""
    items = english_clips()[:clips]
    rows = []
    with httpx.Client(timeout=600) as client:
        for dialect, front_model in (("mimo-chat", "up-mimo"), ("openai-audio", "up-audio")):
            times: dict[str, list[float]] = {"direct": [], "front": []}
            front_cpu = 0.0
            for round_ in range(rounds + 1):  # the first round warms both servers up
                for item in items:
                    data = (SPEECH / item["path"]).read_bytes()
                    mime = "audio/flac" if item["path"].endswith(".flac") else "audio/wav"
                    order = [("direct", upstream, model), ("front", front, front_model)]
                    for way, url, name in order if round_ % 2 else order[::-1]:
                        cpu = cpu_seconds(front_pid)
                        started = time.perf_counter()
                        if dialect == "mimo-chat":
                            chat(client, url, name, data, mime)
                        else:
                            audio(client, url, name, data, Path(item["path"]).name)
                        if round_:
                            times[way].append(time.perf_counter() - started)
                            if way == "front":
                                front_cpu += cpu_seconds(front_pid) - cpu
            direct, through = times["direct"], times["front"]
            rows.append([
                dialect, str(len(direct)),
                f"{statistics.median(direct) * 1000:.0f}",
                f"{statistics.median(through) * 1000:.0f}",
                f"{statistics.median(through) / statistics.median(direct):.3f}",
                f"{statistics.mean(through) / statistics.mean(direct):.3f}",
                f"{front_cpu / len(through) * 1000:.0f}",
                f"{front_cpu / sum(direct):.3f}",
            ])  # fmt: skip
    return rows


def long_audio(
    upstream: str, front: str, model: str, minutes: float, repeats: int
) -> list[list[str]]:
    from harken.evaluation import error_rate

    folder = Path(tempfile.mkdtemp(prefix="harken-upstream-bench-"))
    path, reference, duration = make_recording(minutes, folder, sparse=False)
    data = path.read_bytes()
    ways = [
        ("direct, one call", upstream, model),
        ("front, one call", front, "up-whole"),
        ("front, pieces 1 at a time", front, "up-serial"),
        ("front, pieces 4 at a time", front, "up-pieces"),
    ]
    best: dict[str, float] = {}
    bodies: dict[str, dict] = {}
    with httpx.Client(timeout=3600) as client:
        audio(client, upstream, model, data[: 1 << 16], path.name)  # warm up
        for _ in range(repeats):  # the ways in turn, each `repeats` times; the fastest counts
            for label, url, name in ways:
                started = time.perf_counter()
                bodies[label] = json.loads(
                    audio(client, url, name, data, path.name, response_format="verbose_json")
                )
                seconds = time.perf_counter() - started
                best[label] = min(best.get(label, seconds), seconds)
    baseline = best[ways[0][0]]
    return [
        [
            label, f"{duration:.0f}", str(len(bodies[label]["segments"])),
            f"{best[label]:.1f}", f"{best[label] / baseline:.2f}",
            f"{error_rate(reference, bodies[label]['text'], 'en'):.1%}",
        ]
        for label, _, _ in ways
    ]  # fmt: skip


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--rounds", type=int, default=5, help="overhead rounds over the clips")
    parser.add_argument("--clips", type=int, default=8, help="short clips per round")
    parser.add_argument("--minutes", type=float, default=5.0, help="the long recording")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each long-audio way")
    args = parser.parse_args()

    home = Path(os.environ.get("HARKEN_HOME", Path.home() / ".cache" / "harken"))
    upstream_env = {
        "HARKEN_DEFAULT_MODEL": args.model, "HARKEN_PRELOAD": args.model,
        "HARKEN_MAX_PAYLOAD_MB": "500", "HARKEN_MAX_UPLOAD_MB": "500",
        "HARKEN_REQUEST_TIMEOUT_SECONDS": "0",
    }  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as folder,
        harken_serve(home, upstream_env) as (upstream, _),
    ):
        config = Path(folder) / "front.toml"
        front_config(config, upstream, args.model)
        front_env = {
            "HARKEN_DEFAULT_MODEL": "up-audio", "HARKEN_PRELOAD": "up-audio",
            "HARKEN_MAX_UPLOAD_MB": "500", "HARKEN_REQUEST_TIMEOUT_SECONDS": "0",
        }  # fmt: skip
        with harken_serve(home, front_env, config) as (front, front_pid):
            print(f"upstream: {args.model} at {upstream}; front at {front}\n")
            rows = overhead(upstream, front, front_pid, args.model, args.rounds, args.clips)
            print("Per-request overhead, short clips (direct vs through the front, alternated)")
            header = ["dialect", "requests", "direct ms (median)", "front ms (median)",
                      "ratio (median)", "ratio (mean)", "front CPU ms/request",
                      "front CPU / direct wall"]  # fmt: skip
            print(table(header, rows) + "\n")
            rows = long_audio(upstream, front, args.model, args.minutes, args.repeats)
            print("A long recording: one call vs pieces cut at pauses (openai-audio)")
            header = ["way", "audio s", "segments", "seconds", "vs direct", "WER"]
            print(table(header, rows))


if __name__ == "__main__":
    main()
