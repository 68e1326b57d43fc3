"""Soak: a bounded run of mixed requests, good and hostile, against a real `harken serve`.

Starts the server as a subprocess on loopback, keeps N clients busy for the given time with a
mix of transcriptions (chat, streamed chat, OpenAI multipart), bad audio, bad JSON, oversize
bodies, clients that leave mid-request and cheap GETs, then prints the request count, the
error count (5xx, transport failures, or a status the request should not get) and the server's
resident memory at start, middle and end. Memory that creeps from middle to end is a leak.

Alongside them, `--idle` connections that never send a byte and `--slow` clients that send
their headers a byte a second (slowloris) are held open, each reopened as soon as the server
cuts it. It prints how many were held, how often and how soon the server cut them, the time to
serve a normal request (GET /v1/models on a new connection, every 2 s) while they are held,
and the server's peak resident memory and open file descriptors.

    .venv/bin/python benchmarks/soak.py --seconds 120 --clients 3 --hostile 2 --idle 200 --slow 20
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import select
import socket
import statistics
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


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


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


class Holders:
    """Connections that hold a place and do no work: idle ones and slow-header ones."""

    HEAD = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40 + b"\r\n"

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.lock = threading.Lock()
        self.held: list[int] = []  # samples of connections open at once
        self.cut_after: dict[str, list[float]] = {"idle": [], "slow": []}
        self.answers: Counter[str] = Counter()  # what a cut slow client was told
        self.refused = 0  # connections the server would not accept at all
        self.probe_ms: list[float] = []
        self.probe_errors: Counter[str] = Counter()

    def _open(self) -> tuple[socket.socket, float] | None:
        try:
            return socket.create_connection(self.address, timeout=10), time.monotonic()
        except OSError:
            with self.lock:
                self.refused += 1
            return None

    def hold(self, stop: float, idle: int, slow: int) -> None:
        """Keeps `idle` silent and `slow` trickling connections open until `stop`."""
        conns: list[tuple[str, socket.socket, float, int]] = []  # kind, sock, opened, bytes sent
        for kind, count in (("idle", idle), ("slow", slow)):
            for _ in range(count):
                opened = self._open()
                if opened:
                    conns.append((kind, opened[0], opened[1], 0))
        next_byte = time.monotonic() + 1
        while time.monotonic() < stop:
            readable, _, _ = select.select([c[1] for c in conns], [], [], 0.2)
            closed = {id(sock) for sock in readable}
            trickle = time.monotonic() >= next_byte
            if trickle:
                next_byte += 1
            kept = []
            for kind, sock, opened, sent in conns:
                if id(sock) in closed or (
                    trickle and kind == "slow" and not self._send(sock, sent)
                ):
                    self._record_cut(kind, sock, opened)
                    reopened = self._open()
                    if reopened:
                        kept.append((kind, reopened[0], reopened[1], 0))
                    continue
                kept.append((kind, sock, opened, sent + int(trickle and kind == "slow")))
            conns = kept
            with self.lock:
                self.held.append(len(conns))
        for _, sock, _, _ in conns:
            sock.close()

    def _send(self, sock: socket.socket, sent: int) -> bool:
        try:
            sock.send(self.HEAD[sent % len(self.HEAD) : sent % len(self.HEAD) + 1])
            return True
        except OSError:
            return False

    def _record_cut(self, kind: str, sock: socket.socket, opened: float) -> None:
        try:
            sock.settimeout(0.5)
            answer = sock.recv(4096)
        except OSError:
            answer = b""
        sock.close()
        with self.lock:
            self.cut_after[kind].append(time.monotonic() - opened)
            if kind == "slow":
                self.answers[answer.split(b"\r\n", 1)[0].decode("latin-1") or "closed"] += 1

    def probe(self, url: str, stop: float) -> None:
        """A normal request on a new connection every 2 s: how long it waits behind the holders."""
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                status = httpx.get(f"{url}/v1/models", timeout=30).status_code
                if status == 200:
                    with self.lock:
                        self.probe_ms.append((time.perf_counter() - started) * 1000)
                else:
                    self.probe_errors[str(status)] += 1
            except httpx.HTTPError as exc:
                self.probe_errors[type(exc).__name__] += 1
            time.sleep(2)

    def report(self) -> None:
        held = self.held or [0]
        print(
            f"connections held: mean {statistics.mean(held):.0f}, max {max(held)}; "
            f"refused at connect: {self.refused}"
        )
        for kind, times in self.cut_after.items():
            if not times:
                print(f"  {kind}: none cut")
                continue
            median, longest = statistics.median(times), max(times)
            print(f"  {kind}: {len(times)} cut by the server, after {median:.1f} s (median), "
                  f"{longest:.1f} s (max)")  # fmt: skip
        if self.answers:
            told = ", ".join(f"{answer} x{n}" for answer, n in self.answers.most_common())
            print(f"  slow clients were told: {told}")
        if self.probe_ms:
            ms = sorted(self.probe_ms)
            p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
            print(
                "normal request while held (GET /v1/models, new connection): "
                f"{len(ms)} probes, median {statistics.median(ms):.0f} ms, p95 {p95:.0f} ms, "
                f"max {ms[-1]:.0f} ms, errors {dict(self.probe_errors)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="how long (at most 600)")
    parser.add_argument("--clients", type=int, default=3, help="clients sending speech")
    parser.add_argument("--hostile", type=int, default=2, help="clients sending bad requests")
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--idle", type=int, default=200, help="connections that never send")
    parser.add_argument("--slow", type=int, default=20, help="clients sending headers 1 byte/s")
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
        holders = Holders(url)
        threads.append(threading.Thread(target=holders.hold, args=(stop, args.idle, args.slow)))
        threads.append(threading.Thread(target=holders.probe, args=(url, stop)))
        fds: list[int] = []
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            samples.append(rss_mib(server.pid))
            fds.append(open_fds(server.pid))
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
        holders.report()
        print("server RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
              + f", peak {max(samples, default=0):.0f}; open fds peak {max(fds, default=0)}; "
              f"server alive: {alive}")  # fmt: skip
        sys.exit(1 if errors or not alive else 0)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
