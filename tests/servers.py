"""A real server as `harken serve` builds it (harken's protocol, limits and logging), in a thread.

conftest's `run_server` starts plain uvicorn; the hardening tests of the connection layer need
the server that `build_server` makes, so they start it here.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harken.api import create_app
from harken.api.serving import build_server
from harken.config import Settings
from tests.conftest import RunningServer, free_port, serving_in_thread

TINY = "whisper-tiny.en"


@contextmanager
def run_built_server(home: Path, **overrides: Any) -> Iterator[RunningServer]:
    """`build_server`'s server on a free loopback port; tiny.en only unless told otherwise."""
    overrides.setdefault("default_model", TINY)
    overrides.setdefault("preload", [TINY])
    settings = Settings(home=home, port=free_port(), **overrides)
    app = create_app(settings)
    server = build_server(app, settings, log_level="info")
    url = f"http://127.0.0.1:{settings.port}"
    with serving_in_thread(server, url, settings, app) as run:
        yield run


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class RawConnection:
    """One TCP connection to a server on loopback, spoken to byte by byte: what a hostile client
    sends, and proof that a kept-alive connection survives (or is closed) as it should."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> RawResponse:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        self.send(head.encode() + b"\r\n" + body)
        return self.read_response()

    def read_response(self) -> RawResponse:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return RawResponse(int(status_line.split()[1]), headers, body)

    def closed_within(self, seconds: float) -> bool:
        """True when the server closes the connection within `seconds` (nothing more to read)."""
        self.sock.settimeout(seconds)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buffer += data
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data


def multipart(fields: dict[str, str], file: bytes, name: str = "audio.wav") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part; returns it and its Content-Type."""
    boundary = "harkenboundary7c0d"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + file
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def chat_json(audio: bytes, model: str = TINY) -> bytes:
    data = "data:audio/wav;base64," + base64.b64encode(audio).decode()
    part = {"type": "input_audio", "input_audio": {"data": data}}
    body = {"model": model, "messages": [{"role": "user", "content": [part]}]}
    return json.dumps(body).encode()
