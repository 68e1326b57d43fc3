"""The real `harken serve` process, spoken to as curl would: the contract's MiMo example request
with both key headers, every field checked; the bind guard; health during long work."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_healthy

HARKEN = str(Path(sys.executable).with_name("harken"))


@pytest.fixture(scope="module")
def served(harken_home: Path):
    port = free_port()
    env = {
        **os.environ,
        "HARKEN_HOME": str(harken_home),
        "HARKEN_API_KEYS": "sk-proc-1,sk-proc-2",
        "HARKEN_DEFAULT_MODEL": "whisper-tiny.en",
        "HARKEN_PRELOAD": "whisper-tiny.en",
        "HARKEN_ALIASES": '{"mimo-v2.5-asr": "whisper-tiny.en"}',
    }
    process = subprocess.Popen(
        [HARKEN, "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", lambda: process.poll() is None)
        yield port
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
        assert "sk-proc" not in output  # keys never reach the log


def raw_post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """The request exactly as curl sends it: one HTTP/1.1 POST, nothing added by a client lib."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), payload


@pytest.mark.parametrize(
    "auth",
    [{"api-key": "sk-proc-1"}, {"Authorization": "Bearer sk-proc-2"}],
    ids=["api-key", "bearer"],
)
def test_contract_example_request_against_the_real_process(served, speech, auth):
    clip = speech["ls_1089-134691-0001"]
    body = json.dumps(
        {
            "model": "mimo-v2.5-asr",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": clip.data_url()}}],
                }
            ],
            "asr_options": {"language": "auto"},
            "stream": False,
        }
    ).encode()
    status, headers, payload = raw_post(served, body, {"Content-Type": "application/json", **auth})
    assert status == 200, payload
    assert headers["content-type"] == "application/json"
    response = json.loads(payload)
    assert list(response) == ["id", "object", "created", "model", "choices", "usage"]
    assert re.fullmatch(r"[0-9a-f]{32}", response["id"])
    assert response["object"] == "chat.completion"
    assert isinstance(response["created"], int) and abs(response["created"] - time.time()) < 600
    assert response["model"] == "mimo-v2.5-asr"
    assert response["choices"] == [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {
                "role": "assistant",
                "content": response["choices"][0]["message"]["content"],
                "audio": None,
                "tool_calls": None,
                "audio_tokens": [],
            },
        }
    ]
    content = response["choices"][0]["message"]["content"]
    assert isinstance(content, str) and "wait no longer" in content.lower()
    usage = response["usage"]
    assert usage["seconds"] == 6 and isinstance(usage["seconds"], int)
    assert usage["prompt_tokens_details"] == {"audio_tokens": 34, "cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert usage["prompt_tokens"] == 34
    assert isinstance(usage["completion_tokens"], int) and usage["completion_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_real_process_rejects_a_missing_key(served):
    status, _, payload = raw_post(served, b"{}", {"Content-Type": "application/json"})
    assert status == 401
    assert json.loads(payload)["error"]["code"] == "invalid_api_key"


def test_no_key_means_no_public_bind(harken_home: Path):
    env = {**os.environ, "HARKEN_HOME": str(harken_home), "HARKEN_API_KEYS": ""}
    result = subprocess.run(
        [HARKEN, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--insecure-no-auth" in result.stderr


def test_health_answers_while_a_long_request_decodes(server, speech):
    clip = speech["librivox_de_aeneas"]  # 68 s on whisper-base: seconds of model work
    body = {
        "model": "whisper-base",
        "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": clip.data_url()}}]}],
    }  # fmt: skip
    done = threading.Event()

    def long_request() -> None:
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
        done.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    while server.service.scheduler.running == 0 and not done.is_set():
        time.sleep(0.05)
    latencies = []
    while not done.is_set() and len(latencies) < 5:
        started = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.2)
    worker.join()
    assert latencies, "the long request finished before health was asked"
    assert max(latencies) < 1.0, latencies
