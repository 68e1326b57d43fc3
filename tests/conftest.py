"""Shared fixtures: the real speech set, real models, a real HTTP server on loopback."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from harken import evaluation
from harken.api import create_app
from harken.config import Settings

# The recordings the tests need live in the repository (tests/data/README.md lists their sources
# and licences); the larger set beside it, ../shared/data/speech, is for benchmarks.
SPEECH_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    text: str
    language: str
    duration: float

    def bytes(self) -> bytes:
        return self.path.read_bytes()

    def data_url(self, mime: str | None = None) -> str:
        mime = mime or ("audio/flac" if self.path.suffix == ".flac" else "audio/wav")
        return f"data:{mime};base64,{base64.b64encode(self.bytes()).decode()}"


def load_manifest(speech_dir: Path = SPEECH_DIR) -> dict[str, Clip]:
    """The clips of a speech set by id: the tests' own (tests/data) unless told another."""
    manifest = speech_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise RuntimeError(f"the test recordings are missing: expected {manifest}")
    clips = {}
    for line in manifest.read_text().splitlines():
        item = json.loads(line)
        clips[item["id"]] = Clip(
            item["id"], speech_dir / item["path"], item["text"], item["language"],
            float(item["duration_s"]),
        )  # fmt: skip
    return clips


@pytest.fixture(scope="session")
def speech() -> dict[str, Clip]:
    return load_manifest()


# --- WER/CER: the one definition harken eval uses (Whisper's normaliser, jiwer's alignment)
def normalize_text(text: str) -> str:
    return evaluation.normalize_text(text, "en")


def wer(reference: str, hypothesis: str) -> float:
    return evaluation.error_rate(reference, hypothesis, "en")


def cer(reference: str, hypothesis: str) -> float:
    return evaluation.error_rate(reference, hypothesis, "zh")


# --- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    settings: Settings
    app: Any

    @property
    def service(self) -> Any:
        return self.app.state.service


def wait_healthy(
    url: str,
    alive: Callable[[], bool],
    timeout: float = 120,
    log: Callable[[], str] = lambda: "",
) -> None:
    """Wait until the server at `url` answers GET /health with 200. Raises RuntimeError (with
    what `log` gives) if `alive()` turns false first, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive():
            raise RuntimeError(f"the server at {url} stopped before it was ready\n{log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} was not ready in {timeout:.0f} s\n{log()}")
        time.sleep(0.2)


@contextmanager
def run_server(home: Path, **overrides: Any) -> Iterator[RunningServer]:
    """A real uvicorn server on a free loopback port, in a thread, ready when yielded."""
    overrides.setdefault("preload", ["whisper-base", "whisper-tiny.en"])
    settings = Settings(home=home, **overrides)
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    url = f"http://127.0.0.1:{port}"
    with serving_in_thread(uvicorn.Server(config), url, settings, app) as run:
        yield run


@contextmanager
def serving_in_thread(
    server: uvicorn.Server, url: str, settings: Settings, app: Any
) -> Iterator[RunningServer]:
    """Run a uvicorn server (its app already built) in a thread; ready when yielded, stopped
    after."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_healthy(url, thread.is_alive)
    try:
        yield RunningServer(url, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="session")
def harken_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("harken-home")


@pytest.fixture(scope="session")
def server(harken_home: Path) -> Iterator[RunningServer]:
    """The shared server: no keys, both built-in models loaded."""
    with run_server(harken_home) as running:
        yield running


@pytest.fixture(scope="session")
def keyed_server(harken_home: Path) -> Iterator[RunningServer]:
    """A server that requires one of two keys; tiny.en only, to stay light."""
    with run_server(
        harken_home,
        api_keys=["sk-test-one", "sk-test-two"],
        default_model="whisper-tiny.en",
        preload=["whisper-tiny.en"],
        aliases={"mimo-v2.5-asr": "whisper-tiny.en"},
    ) as running:
        yield running


@pytest.fixture(scope="session")
def openai_client(server: RunningServer) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def assert_error() -> Callable[..., dict[str, Any]]:
    """Checks a response carries the contract's error body with the given status."""

    def check(
        response: httpx.Response, status: int, code: str | None = None, param: str | None = None
    ) -> dict[str, Any]:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert "Traceback" not in error["message"] and "/work/" not in error["message"]
        if code is not None:
            assert error["code"] == code, error
        if param is not None:
            assert error["param"] == param, error
        return error

    return check


def wav_bytes(samples: Any) -> bytes:
    """16 kHz mono float samples as a 16-bit WAV file's bytes."""
    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=16_000, layout="mono")
        pcm = np.rint(np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 16_000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


def sse_payloads(text: str) -> list[Any]:
    """The `data:` payloads of a whole SSE response (every block must be one), `[DONE]` as is."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
