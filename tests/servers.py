"""A real server as `harken serve` builds it (harken's protocol, limits and logging), in a thread.

conftest's `run_server` starts plain uvicorn; the hardening tests of the connection layer need
the server that `build_server` makes, so they start it here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harken.api import create_app
from harken.api.serving import build_server
from harken.config import Settings
from tests.conftest import RunningServer, free_port, wait_healthy

TINY = "whisper-tiny.en"


@contextmanager
def run_built_server(home: Path, **overrides: Any) -> Iterator[RunningServer]:
    """`build_server`'s server on a free loopback port; tiny.en only unless told otherwise."""
    overrides.setdefault("default_model", TINY)
    overrides.setdefault("preload", [TINY])
    settings = Settings(home=home, port=free_port(), **overrides)
    app = create_app(settings)
    server = build_server(app, settings, log_level="info")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    wait_healthy(url, thread.is_alive)
    try:
        yield RunningServer(url, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
