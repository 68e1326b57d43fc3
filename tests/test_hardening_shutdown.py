"""SIGTERM on a real `harken serve`: new work gets 503, admitted work finished, exit 0.

Also reads the whole log of that process (info level, access log on): the key it was given
and the keys clients sent never appear in it.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from harken.audio import decode_audio
from tests.conftest import free_port, wait_healthy, wav_bytes

MODEL = "whisper-tiny.en"
KEY = "sk-shutdown-secret-0123"


def test_sigterm_finishes_admitted_work_then_exits_cleanly(
    harken_home: Path, server: Any, speech: Any, tmp_path: Path
):
    # `server` first: the weights are assembled in harken_home before this process starts.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env |= {
        "HARKEN_HOME": str(harken_home),
        "HARKEN_API_KEYS": KEY,
        "HARKEN_SHUTDOWN_GRACE_SECONDS": "240",
    }
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "harken", "serve", "--port", str(port), "--model", MODEL],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(url, lambda: process.poll() is None, timeout=180, log=log_path.read_text)

        # The clip six times over, 10 s apart (about two minutes): admitted work that takes
        # long enough for the late request to meet the draining server, not a closed port.
        clip = decode_audio(speech["jfk_inaugural_1961"].bytes())
        gap = np.zeros(10 * 16_000, dtype=np.float32)
        audio = wav_bytes(np.concatenate([clip, gap] * 6))
        data_url = "data:audio/wav;base64," + base64.b64encode(audio).decode()
        body = {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": data_url}}],
                }
            ],
        }
        answers: dict[str, httpx.Response] = {}

        def in_flight() -> None:
            answers["admitted"] = httpx.post(
                f"{url}/v1/chat/completions", json=body, headers={"api-key": KEY}, timeout=600
            )

        thread = threading.Thread(target=in_flight)
        thread.start()
        while httpx.get(f"{url}/health", timeout=10).json()["queue"]["admitted"] == 0:
            assert thread.is_alive(), answers
            time.sleep(0.05)

        process.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        # The port stays open while admitted work drains, and new work gets a clear 503 (a client
        # dropped at a closing port could not tell whether its request was done).
        # The signal is seen at the server's next tick: wait until it says it is draining, so
        # that the late request does not race the signal (admitted, it would be answered only
        # once the work is done, and the port closed by then).
        while httpx.get(f"{url}/health", timeout=10).status_code != 503:
            assert time.monotonic() - sent_at < 30, "the server did not start draining"
            time.sleep(0.02)
        late = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"api-key": KEY}, timeout=30
        )
        assert late.status_code == 503, "new work was still taken after SIGTERM"
        assert late.json()["error"]["code"] == "overloaded", late.text
        assert "shutting down" in late.json()["error"]["message"]
        assert late.headers["connection"] == "close"
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and "shutting down" in health.text

        thread.join(timeout=600)
        response = answers["admitted"]
        assert response.status_code == 200, response.text
        assert "country" in response.json()["choices"][0]["message"]["content"].lower()
        assert process.wait(timeout=120) == 0, log_path.read_text()
        print(f"\nSIGTERM: late request 503; exit 0 {time.monotonic() - sent_at:.1f} s later")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text()
    assert "POST /v1/chat/completions" in log_text or "chat/completions" in log_text, log_text
    assert KEY not in log_text
