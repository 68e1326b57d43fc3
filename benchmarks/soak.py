"""Soak: a bounded run of mixed requests, good and hostile, against a real `harken serve`.

Starts the server as a subprocess on loopback, keeps N clients busy for the given time with a
mix of transcriptions (chat, streamed chat, OpenAI multipart), bad audio, bad JSON, oversize
bodies, clients that leave mid-request and cheap GETs, then prints the request count, the
error count (5xx, transport failures, or a status the request should not get) and the server's
resident memory at start, middle and end. Memory that creeps from middle to end is a leak.

    .venv/bin/python benchmarks/soak.py --seconds 120 --clients 3 --hostile 2
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech"
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, wait_healthy  # noqa: E402

CLIPS = ["ls_1089-134691-0000", "ls_1089-134686-0001", "jfk_inaugural_1961"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_clips() -> list[bytes]:
    manifest = {}
    for line in (SPEECH / "manifest.jsonl").read_text().splitlines():
        item = json.loads(line)
        manifest[item["id"]] = SPEECH / item["path"]
    return [manifest[name].read_bytes() for name in CLIPS]


class Soak:
    def __init__(self, url: str, model: str, clips: list[bytes], seed: int) -> None:
        self.url = url
        self.model = model
        self.clips = clips
        self.random = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()

    def chat_body(self, data: str, stream: bool = False) -> dict:
        part = {"type": "input_audio", "input_audio": {"data": data}}
        return {"model": self.model, "messages": [{"role": "user", "content": [part]}],
                "stream": stream}  # fmt: skip

    def clip_url(self, rng: random.Random) -> str:
        return "data:audio/wav;base64," + base64.b64encode(rng.choice(self.clips)).decode()

    # Each kind: (weight, function returning (status or None, the statuses it may get)).
    def chat(self, c: httpx.Client, rng: random.Random) -> tuple[int | None, set[int]]:
        r = c.post("/v1/chat/completions", json=self.chat_body(self.clip_url(rng)))
        ok = r.status_code != 200 or bool(r.json()["choices"][0]["message"]["content"])
        return (r.status_code if ok else -1), {200, 429}

    def chat_stream(self, c: httpx.Client, rng: random.Random) -> tuple[int | None, set[int]]:
        with c.stream("POST", "/v1/chat/completions",
                      json=self.chat_body(self.clip_url(rng), True)) as r:  # fmt: skip
            text = "".join(r.iter_text())
        complete = r.status_code != 200 or text.rstrip().endswith("data: [DONE]")
        return (r.status_code if complete else -1), {200, 429}

    def multipart(self, c: httpx.Client, rng: random.Random) -> tuple[int | None, set[int]]:
        fmt = rng.choice(["json", "text", "srt", "verbose_json"])
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", rng.choice(self.clips))},
                   data={"model": self.model, "response_format": fmt})  # fmt: skip
        return r.status_code, {200, 404, 429}  # 404: a server without the audio API yet

    def bad_audio(self, c: httpx.Client, rng: random.Random) -> tuple[int | None, set[int]]:
        junk = rng.choice(self.clips)[: rng.randint(1, 300)] + rng.randbytes(rng.randint(0, 2000))
        data = "data:audio/wav;base64," + base64.b64encode(junk).decode()
        r = c.post("/v1/chat/completions", json=self.chat_body(data))
        return r.status_code, {200, 400, 429}

    def bad_json(self, c: httpx.Client, rng: random.Random) -> tuple[int | None, set[int]]:
        raw = rng.choice([b"{", b"[]", b'{"model": 1}', b'{"messages": []}', rng.randbytes(50)])
        r = c.post(
            "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
        return r.status_code, {400}

    def oversize(self, c: httpx.Client, rng: random.Random) -> tuple[int | None, set[int]]:
        """Declares a gigabyte, sends 100 bytes: the 413 must come from the declaration."""
        host, port = self.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: 999999999\r\n\r\n" + b"x" * 100
            )
            head = sock.recv(4096)
        return int(head.split()[1]), {413}

    def vanish(self, c: httpx.Client, rng: random.Random) -> tuple[int | None, set[int]]:
        body = json.dumps(self.chat_body(self.clip_url(rng))).encode()
        host, port = self.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(rng.uniform(0.05, 0.5))
        return 0, {0}

    def cheap(self, c: httpx.Client, rng: random.Random) -> tuple[int | None, set[int]]:
        path = rng.choice(["/health", "/v1/models", "/v1/models/nope", "/metrics", "/nowhere"])
        return c.get(path).status_code, {200, 404}

    # Clients that transcribe, and clients that only send what must be refused (or is cheap):
    # these keep the request count high while the model is busy.
    TRANSCRIBING: ClassVar[dict[str, int]] = {"chat": 4, "chat_stream": 2, "multipart": 2,
                                              "vanish": 1}  # fmt: skip
    HOSTILE: ClassVar[dict[str, int]] = {"bad_audio": 3, "bad_json": 2, "oversize": 1,
                                         "cheap": 3}  # fmt: skip

    def client(self, stop: float, seed: int, mix: dict[str, int]) -> None:
        rng = random.Random(seed)
        kinds, weights = zip(*mix.items(), strict=True)
        with httpx.Client(base_url=self.url, timeout=600) as c:
            while time.monotonic() < stop:
                kind = rng.choices(kinds, weights)[0]
                try:
                    status, expected = getattr(self, kind)(c, rng)
                except (httpx.HTTPError, OSError, ValueError, IndexError) as exc:
                    status, expected = None, set()
                    with self.lock:
                        self.errors[f"{kind}: {type(exc).__name__}"] += 1
                with self.lock:
                    self.counts[f"{kind} {status}"] += 1
                    if status is not None and status not in expected:
                        self.errors[f"{kind}: got {status}"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="how long (at most 600)")
    parser.add_argument("--clients", type=int, default=3, help="clients sending speech")
    parser.add_argument("--hostile", type=int, default=2, help="clients sending bad requests")
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    seconds = min(args.seconds, 600)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("HARKEN_API_KEYS", "HARKEN_HOST")}
    env["HARKEN_MAX_QUEUE"] = env.get("HARKEN_MAX_QUEUE", "8")
    server = subprocess.Popen(
        [sys.executable, "-m", "harken", "serve", "--port", str(port), "--model", args.model,
         "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    try:
        try:
            wait_healthy(url, lambda: server.poll() is None, timeout=300)
        except RuntimeError as exc:
            sys.exit(str(exc))
        soak = Soak(url, args.model, load_clips(), args.seed)
        # One warm-up request so that the start figure includes a used model, not a cold one.
        httpx.post(f"{url}/v1/chat/completions", timeout=600,
                   json=soak.chat_body(soak.clip_url(random.Random(0))))  # fmt: skip
        rss = {"start": rss_mib(server.pid)}
        samples: list[float] = []
        started = time.monotonic()
        stop = started + seconds
        mixes = [Soak.TRANSCRIBING] * args.clients + [Soak.HOSTILE] * args.hostile
        threads = [
            threading.Thread(target=soak.client, args=(stop, args.seed + i, mix))
            for i, mix in enumerate(mixes)
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            samples.append(rss_mib(server.pid))
            if "middle" not in rss and time.monotonic() >= started + seconds / 2:
                rss["middle"] = samples[-1]
            time.sleep(1)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        time.sleep(2)  # let the last vanished clients' jobs end
        rss["end"] = rss_mib(server.pid)
        alive = server.poll() is None
        total = sum(soak.counts.values())
        errors = sum(soak.errors.values())
        print(
            f"soak: {elapsed:.0f} s, {args.clients} speech + {args.hostile} hostile clients, "
            f"model {args.model}"
        )
        print(f"requests: {total} ({total / elapsed:.1f}/s), errors: {errors}")
        for key, n in sorted(soak.counts.items()):
            print(f"  {key:<24} {n}")
        for key, n in sorted(soak.errors.items()):
            print(f"  ERROR {key:<18} {n}")
        print("server RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
              + f", max {max(samples, default=0):.0f}; server alive: {alive}")  # fmt: skip
        sys.exit(1 if errors or not alive else 0)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
