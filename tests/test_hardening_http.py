"""The connection layer of the real `harken serve` process: what arrives before a request is a
request, and what the log keeps of it.

Raw sockets on loopback, bounded in count and time: malformed HTTP (the outside probe's list)
gets the contract's error body; connections that idle, trickle their headers or crowd past the
cap are cut; a request under way keeps its own body timeouts; query strings, keys in them
included, never reach the log; `/docs` loads nothing from another host.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from harken.api import create_app
from harken.config import Settings
from tests.conftest import free_port, wait_healthy
from tests.servers import TINY, RawConnection, RawResponse

HARKEN = str(Path(sys.executable).with_name("harken"))
KEY = "sk-http-test-key"
SECRET = "sk-query-secret-0451"  # sent in query strings and headers; must never be logged
IDLE = 2.0  # HARKEN_CONNECTION_IDLE_TIMEOUT_SECONDS
HEADERS = 2.0  # HARKEN_HEADER_TIMEOUT_SECONDS
KEEP_ALIVE = 3  # HARKEN_KEEP_ALIVE_TIMEOUT_SECONDS
CAP = 30  # HARKEN_MAX_CONNECTIONS


@dataclass
class Served:
    url: str
    log: Path

    def log_text(self) -> str:
        time.sleep(0.3)  # the server writes its lines as it answers; let the last ones land
        return self.log.read_text()


@pytest.fixture(scope="module")
def served(harken_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    log = tmp_path_factory.mktemp("http-log") / "serve.log"
    env = {
        **os.environ,
        "HARKEN_HOME": str(harken_home),
        "HARKEN_API_KEYS": KEY,
        "HARKEN_DEFAULT_MODEL": TINY,
        "HARKEN_PRELOAD": TINY,
        "HARKEN_ALIASES": f'{{"mimo-v2.5-asr": "{TINY}", "whisper-1": "{TINY}"}}',
        "HARKEN_CONNECTION_IDLE_TIMEOUT_SECONDS": str(IDLE),
        "HARKEN_HEADER_TIMEOUT_SECONDS": str(HEADERS),
        "HARKEN_KEEP_ALIVE_TIMEOUT_SECONDS": str(KEEP_ALIVE),
        "HARKEN_MAX_CONNECTIONS": str(CAP),
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [HARKEN, "serve", "--port", str(port), "--log-level", "info"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, lambda: process.poll() is None, log=log.read_text)
        yield Served(url, log)
    finally:
        process.terminate()
        process.wait(timeout=60)
    text = log.read_text()
    assert SECRET not in text and KEY not in text, "a key reached the log"


def exchange(url: str, data: bytes, timeout: float = 30) -> RawResponse:
    """Send `data` on a new connection (from a thread, so that a server that answers and closes
    before the client has sent it all is still heard) and read the first response."""
    connection = RawConnection(url, timeout=timeout)

    def push() -> None:
        try:
            for start in range(0, len(data), 65536):
                connection.send(data[start : start + 65536])
        except OSError:
            pass  # the server has answered and closed: what it said is what counts

    sender = threading.Thread(target=push)
    sender.start()
    try:
        return connection.read_response()
    finally:
        sender.join(timeout)
        connection.close()


def check_error(response: RawResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    assert SECRET not in error["message"] and "Traceback" not in error["message"]
    return error


# --- malformed HTTP, the probe's list
def _head(*lines: str, method: str = "GET", path: str = "/health", version: str = "1.1") -> bytes:
    return (f"{method} {path} HTTP/{version}\r\n" + "".join(f"{x}\r\n" for x in lines)).encode()


MALFORMED: dict[str, tuple[bytes, int, str]] = {
    "url-200kb": (_head("Host: x", path="/" + "a" * 200_000) + b"\r\n", 431, "headers_too_large"),
    "header-1mb": (_head("Host: x", "X-Big: " + "b" * 1_000_000) + b"\r\n", 431,
                   "headers_too_large"),
    "nul-in-header": (_head("Host: x", f"X-Key: {SECRET}\0x") + b"\r\n", 400, "invalid_http"),
    "bare-cr-in-header": (_head("Host: x", f"X-Key: {SECRET}\rx") + b"\r\n", 400,
                          "invalid_http"),
    "bad-chunk-size": (_head("Host: x", "Transfer-Encoding: chunked", method="POST",
                             path="/v1/chat/completions") + b"\r\nzz\r\n{}\r\n0\r\n\r\n", 400,
                       "invalid_http"),
    "transfer-encoding-gzip": (_head("Host: x", "Transfer-Encoding: gzip", method="POST",
                                     path="/v1/chat/completions") + b"\r\n", 400, "invalid_http"),
    "negative-content-length": (_head("Host: x", "Content-Length: -5", method="POST",
                                      path="/v1/chat/completions") + b"\r\n", 400,
                                "invalid_http"),
    "duplicated-content-length": (_head("Host: x", "Content-Length: 2", "Content-Length: 3",
                                        method="POST", path="/v1/chat/completions")
                                  + b"\r\n{}", 400, "invalid_http"),
    "missing-host": (_head() + b"\r\n", 400, "invalid_http"),
    "duplicated-host": (_head("Host: a", "Host: b") + b"\r\n", 400, "invalid_http"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_http_gets_the_contract_body(served: Served, name: str):
    data, status, code = MALFORMED[name]
    response = exchange(served.url, data)
    error = check_error(response, status, code)
    assert error["message"] != "Invalid HTTP request received."
    assert response.closes  # the request could not be framed: the connection can't go on
    assert httpx.get(f"{served.url}/health", timeout=10).status_code == 200


def test_http10_post_without_content_length_names_the_missing_header(served: Served):
    data = _head("Host: x", f"api-key: {KEY}", "Content-Type: application/json",
                 method="POST", path="/v1/chat/completions", version="1.0")  # fmt: skip
    response = exchange(served.url, data + b'\r\n{"model": "whisper-1", "messages": []}')
    error = check_error(response, 411, "length_required")
    assert "Content-Length" in error["message"] and "None" not in error["message"]


def test_an_empty_json_body_says_so(served: Served):
    with RawConnection(served.url) as connection:
        response = connection.request(
            "POST", "/v1/chat/completions", b"",
            {"api-key": KEY, "Content-Type": "application/json"},
        )  # fmt: skip
        error = check_error(response, 400, "invalid_json")
        assert "empty" in error["message"] and "None" not in error["message"]
        assert connection.request("GET", "/health").status == 200  # and the connection lives


# --- the log
def test_query_strings_never_reach_the_log(served: Served):
    with RawConnection(served.url) as connection:
        for path in ("/v1/models", "/health", "/nowhere", "/docs", "/v1/models/whisper-1"):
            connection.request("GET", f"{path}?api_key={SECRET}&x=1")
        response = connection.request("POST", f"/v1/chat/completions?key={SECRET}", b"{}")
        assert response.status == 401
    exchange(served.url, _head("Host: x", "X: \0", path=f"/v1/models?api_key={SECRET}") + b"\r\n")
    text = served.log_text()
    assert '"status":401' in text and '"route":"/docs"' in text  # the log was on
    assert SECRET not in text
    assert not re.search(r"\?\S*=", text), [line for line in text.splitlines() if "?" in line]


# --- idle, slow and too many connections
def test_connections_that_never_send_are_closed_and_others_are_served(served: Served):
    idle = [RawConnection(served.url) for _ in range(20)]
    try:
        started = time.monotonic()
        with httpx.Client(base_url=served.url, headers={"api-key": KEY}) as client:
            assert client.get("/v1/models", timeout=10).status_code == 200
        assert time.monotonic() - started < 2.0  # served at once while 20 idle ones are held
        for connection in idle:
            assert connection.closed_within(IDLE + 3), "an idle connection was kept"
        assert time.monotonic() - started < IDLE + 5
    finally:
        for connection in idle:
            connection.close()


def test_headers_sent_a_byte_at_a_time_get_a_408(served: Served):
    with RawConnection(served.url, timeout=30) as connection:
        started = time.monotonic()
        trickle = f"GET /health?api_key={SECRET} HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n".encode()
        for byte in trickle:
            try:
                connection.send(bytes([byte]))
            except OSError:
                break
            if b"\r\n\r\n" in connection.buffer or connection.closed_within(0.25):
                break
        response = connection.read_response()
        check_error(response, 408, "request_timeout")
        assert response.closes
        assert HEADERS <= time.monotonic() - started < HEADERS + 3
    assert SECRET not in served.log_text()


def test_a_request_under_way_keeps_its_body_timeouts(served: Served):
    """A complete head, then a pause longer than the header timeout before the body: the body's
    own (longer) timeouts apply, and the same connection serves the next request."""
    body = b'{"model": "whisper-1"}'
    with RawConnection(served.url) as connection:
        connection.send(
            _head("Host: x", f"api-key: {KEY}", "Content-Type: application/json",
                  f"Content-Length: {len(body)}", method="POST", path="/v1/chat/completions")
            + b"\r\n"
        )  # fmt: skip
        assert not connection.closed_within(HEADERS + 1.5)
        connection.send(body)
        response = connection.read_response()
        check_error(response, 400, "invalid_request")  # `messages` is missing: the route spoke
        assert connection.request("GET", "/health").status == 200
        # Between requests uvicorn's keep-alive timeout applies.
        assert connection.closed_within(KEEP_ALIVE + 3)


def test_connections_past_the_cap_get_a_503(served: Served):
    held = [RawConnection(served.url) for _ in range(CAP)]
    try:
        time.sleep(0.2)  # the server has accepted them all
        response = httpx.get(f"{served.url}/health", timeout=10)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "too_many_connections" and error["type"] == "server_error"
        assert response.headers["retry-after"] == "1"
        assert response.headers["connection"] == "close"
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.3)
    assert httpx.get(f"{served.url}/health", timeout=10).status_code == 200


# --- in-process: the error handler and the docs setting
@pytest.fixture(scope="module")
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("http-app"), preload=[])


def test_a_500_says_connection_close(app_settings: Settings):
    """Starlette re-raises after the 500 and uvicorn drops the connection: the answer says so."""
    app = create_app(app_settings)

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/boom")
    assert response.status_code == 500
    assert response.headers["connection"] == "close"
    assert response.json()["error"]["type"] == "server_error"


def test_docs_page_loads_nothing_from_another_host(served: Served):
    for page, assets in (
        ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"]),
        ("/redoc", ["redoc.standalone.js", "favicon.png"]),
    ):
        response = httpx.get(served.url + page, timeout=10)
        assert response.status_code == 200
        html = response.text
        assert "http://" not in html and "https://" not in html, html
        links = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert links and all(link.startswith("/") and not link.startswith("//") for link in links)
        assert "default-src 'self'" in response.headers["content-security-policy"]
        for name in assets:
            path = f"/docs/assets/{name}"
            assert path in html
            asset = httpx.get(served.url + path, timeout=10)
            assert asset.status_code == 200 and len(asset.content) > 1000, path
    assert '"validatorUrl": null' in httpx.get(served.url + "/docs", timeout=10).text


def test_docs_can_be_turned_off(app_settings: Settings):
    client = TestClient(create_app(app_settings.model_copy(update={"docs": False})))
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200  # the schema stays: tools use it


def test_the_uvicorn_hooks_serving_relies_on_exist():
    """serving.py overrides these of uvicorn's h11 protocol; an upgrade that renames one must
    fail here by name, not by a limit silently gone."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    hooks = [
        "connection_made", "data_received", "connection_lost", "handle_events",
        "send_400_response", "on_response_complete", "handle_websocket_upgrade",
    ]  # fmt: skip
    for name in hooks:
        assert callable(getattr(H11Protocol, name, None)), name
    assert hasattr(h11.Connection, "trailing_data") and hasattr(h11.Connection, "next_event")


def test_a_cap_above_the_file_limit_is_warned_about(monkeypatch, caplog):
    import resource

    from harken.api import serving

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (256, 4096))
    with caplog.at_level("WARNING", logger="harken.api.serving"):
        serving._check_file_limit(1000)
        serving._check_file_limit(100)
    assert len(caplog.records) == 1 and "ulimit -n" in caplog.records[0].getMessage()
