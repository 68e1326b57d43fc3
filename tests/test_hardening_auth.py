"""Only holders of a key get in: both header forms, every near miss refused, keys never echoed.

Runs against the session's `keyed_server` (keys `sk-test-one`, `sk-test-two`), a CORS-enabled
server, and the real `harken serve` command for the bind rule.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, run_server, wait_healthy

KEYS = ("sk-test-one", "sk-test-two")
MODEL = "whisper-tiny.en"


def chat_body(clip: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": clip}}]}
        ],
    }


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key", error
    for key in KEYS:
        assert key not in response.text
    for value in response.request.headers.values():
        if "sk-" in value:  # the key the client sent is not echoed either
            assert value.split()[-1] not in response.text


# Near misses: each must be refused exactly like no key at all.
WRONG = {
    "none": {},
    "empty api-key": {"api-key": ""},
    "blank api-key": {"api-key": "   "},
    "empty bearer": {"Authorization": "Bearer "},
    "bare scheme": {"Authorization": "Bearer"},
    "prefix of a key": {"api-key": "sk-test-on"},
    "key plus a byte": {"api-key": "sk-test-one1"},
    "other case": {"api-key": "SK-TEST-ONE"},
    "both keys glued": {"api-key": "sk-test-onesk-test-two"},
    "two keys in one header": {"api-key": "sk-test-one,sk-test-two"},
    "basic scheme": {"Authorization": "Basic sk-test-one"},
    "token without scheme": {"Authorization": "sk-test-one"},
    "wrong bearer": {"Authorization": "Bearer sk-nope"},
    "key with a NUL": {"api-key": "sk-test-one\x00"},
    "long garbage": {"api-key": "x" * 8000},
}
RIGHT = {
    "api-key": {"api-key": "sk-test-one"},
    "bearer": {"Authorization": "Bearer sk-test-two"},
    "bearer, lower-case scheme": {"Authorization": "bearer sk-test-one"},
    "api-key with spaces": {"api-key": "  sk-test-two  "},
}


def raw_request(
    url: str, method: str, path: str, header: bytes, body: bytes = b""
) -> tuple[int, str]:
    """One request over a bare socket, for header values httpx won't send (spaces, NUL)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
            + (header + b"\r\n" if header else b"")
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload.decode(errors="replace")


def header_line(headers: dict[str, str]) -> bytes:
    return b"".join(f"{k}: {v}".encode() for k, v in headers.items())


ENDPOINTS = [
    ("GET", "/v1/models", b""),
    ("GET", f"/v1/models/{MODEL}", b""),
    ("GET", "/metrics", b""),
    ("POST", "/v1/chat/completions", b'{"model": "whisper-tiny.en"}'),
    # Refused before the body is even parsed: no 400 telling a stranger what is wrong.
    ("POST", "/v1/chat/completions", b"{not json"),
    ("POST", "/v1/audio/transcriptions", b"--x--"),
]


@pytest.mark.parametrize("name", list(WRONG))
def test_near_misses_are_refused_everywhere(keyed_server: Any, name: str):
    for method, path, body in ENDPOINTS:
        status, text = raw_request(keyed_server.url, method, path, header_line(WRONG[name]), body)
        assert status in (400, 401), (path, text)
        if status == 400:  # the HTTP parser itself refused the header (a NUL byte)
            assert name == "key with a NUL"
            continue
        error = json.loads(text)["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        for secret in (*KEYS, "sk-test-on", "sk-nope", "x" * 50):
            assert secret not in text


@pytest.mark.parametrize("name", list(RIGHT))
def test_both_header_forms_get_in(keyed_server: Any, name: str):
    status, text = raw_request(keyed_server.url, "GET", "/v1/models", header_line(RIGHT[name]))
    assert status == 200, text


def test_a_key_transcribes_with_the_openai_sdk(keyed_server: Any, speech: Any):
    import openai

    clip = speech["ls_1089-134691-0000"]
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEYS[1], max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL, messages=chat_body(clip.data_url())["messages"]
    )
    assert "wait" in reply.choices[0].message.content.lower()
    bad = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert "sk-wrong" not in str(caught.value)


def test_health_stays_open_and_metrics_need_a_key(keyed_server: Any):
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    assert_401(httpx.get(f"{keyed_server.url}/metrics"))
    with_key = httpx.get(f"{keyed_server.url}/metrics", headers={"api-key": KEYS[0]})
    assert with_key.status_code in (200, 404), with_key.text  # 404 until issue 7's /metrics
    if with_key.status_code == 200:
        assert "text/plain" in with_key.headers["content-type"]


def test_keys_never_reach_the_log(keyed_server: Any, caplog: pytest.LogCaptureFixture, speech: Any):
    """Every log record the server writes while it is handed keys, right and wrong, is clean."""
    caplog.set_level(logging.DEBUG)
    url = keyed_server.url
    clip = speech["ls_1089-134691-0000"]
    httpx.get(f"{url}/v1/models", headers={"api-key": "sk-test-one-leak"})
    httpx.post(f"{url}/v1/chat/completions", headers={"api-key": KEYS[0]}, content=b"{bad")
    httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEYS[1]}"},
        json=chat_body(clip.data_url()),
        timeout=300,
    )
    text = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (*KEYS, "sk-test-one-leak"):
        assert secret not in text


# --- CORS
def test_cors_is_off_by_default(server: Any):
    preflight = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = httpx.get(f"{server.url}/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


@pytest.fixture(scope="module")
def cors_server(harken_home: Path) -> Iterator[Any]:
    with run_server(
        harken_home,
        api_keys=[KEYS[0]],
        cors_origins=["https://app.example"],
        default_model=MODEL,
        preload=[MODEL],
    ) as running:
        yield running


def test_cors_allows_only_the_configured_origins(cors_server: Any):
    url = f"{cors_server.url}/v1/chat/completions"
    request = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "api-key"}
    allowed = httpx.options(url, headers={"Origin": "https://app.example", **request})
    assert allowed.status_code == 200, allowed.text  # a preflight carries no key
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    refused = httpx.options(url, headers={"Origin": "https://evil.example", **request})
    assert refused.headers.get("access-control-allow-origin") != "https://evil.example"
    # The browser can read a 401 (so the page can ask for a key), and a 200 with one.
    no_key = httpx.get(f"{cors_server.url}/v1/models", headers={"Origin": "https://app.example"})
    assert_401(no_key)
    assert no_key.headers["access-control-allow-origin"] == "https://app.example"
    ok = httpx.get(
        f"{cors_server.url}/v1/models",
        headers={"Origin": "https://app.example", "api-key": KEYS[0]},
    )
    assert (
        ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
    )


# --- the bind rule, through the real command line
def harken(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harken", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def clean_env(harken_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env["HARKEN_HOME"] = str(harken_home)
    return env


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_no_key_refuses_a_non_loopback_bind(clean_env: dict[str, str], host: str):
    process = harken("serve", "--host", host, "--port", str(free_port()), env=clean_env)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2, out
    assert "--insecure-no-auth" in out and "HARKEN_API_KEYS" in out


def test_insecure_no_auth_and_keys_each_allow_it(clean_env: dict[str, str], server: Any):
    """Past the bind rule: with the flag (or a key) the server starts and answers on loopback."""
    for extra_args, extra_env in ((["--insecure-no-auth"], {}), ([], {"HARKEN_API_KEYS": "sk-a"})):
        port = free_port()
        process = harken(
            "serve", "--host", "0.0.0.0", "--port", str(port), "--model", MODEL, *extra_args,
            env={**clean_env, **extra_env},
        )  # fmt: skip
        try:
            wait_healthy(
                f"http://127.0.0.1:{port}",
                lambda p=process: p.poll() is None,
                log=lambda p=process: p.stdout.read() if p.stdout else "",
            )
            models = httpx.get(f"http://127.0.0.1:{port}/v1/models")
            assert models.status_code == (401 if extra_env else 200)
        finally:
            process.terminate()
            process.wait(timeout=60)
        assert process.returncode == 0
