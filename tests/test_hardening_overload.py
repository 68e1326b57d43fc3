"""A burst far above capacity, on loopback, bounded in count and time: the overflow gets fast
429s, every admitted request completes correctly, and memory stays bounded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import run_server, wer

TINY = "whisper-tiny.en"
BURST = 40


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_burst_far_above_capacity(harken_home: Path, speech) -> None:
    clip = speech["sphinx_goforward"]
    body = {
        "model": TINY,
        "messages": [
            {"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": clip.data_url()}}]}
        ],
    }  # fmt: skip
    with run_server(
        harken_home, workers=1, max_active=2, max_queue=2, default_model=TINY, preload=[TINY]
    ) as running:
        assert running.service.scheduler.capacity == 4
        url = f"{running.url}/v1/chat/completions"
        with httpx.Client(timeout=120) as client:
            client.post(url, json=body).raise_for_status()  # warm up
            before = rss_mb()

            def send(_: int) -> tuple[httpx.Response, float]:
                started = time.monotonic()
                response = client.post(url, json=body)
                return response, time.monotonic() - started

            with ThreadPoolExecutor(BURST) as pool:
                results = list(pool.map(send, range(BURST)))
            during = rss_mb()

            ok = [r for r, _ in results if r.status_code == 200]
            refused = [(r, t) for r, t in results if r.status_code == 429]
            assert len(ok) + len(refused) == BURST, [r.status_code for r, _ in results]
            assert len(ok) >= 4 and len(refused) >= BURST // 2
            for response in ok:
                assert wer(clip.text, response.json()["choices"][0]["message"]["content"]) <= 0.25
            for response, elapsed in refused:
                assert response.json()["error"]["code"] == "rate_limit_exceeded"
                assert int(response.headers["retry-after"]) >= 1
                assert elapsed < 5.0, "the overflow must be refused at once, not queued"

            # Afterwards: nothing is left admitted, memory is where it was, and it still serves.
            deadline = time.monotonic() + 30
            while running.service.scheduler.admitted and time.monotonic() < deadline:
                time.sleep(0.1)
            assert running.service.scheduler.admitted == 0
            assert client.post(url, json=body).status_code == 200
            assert during - before < 300, (before, during)
            assert rss_mb() - before < 300, (before, rss_mb())
