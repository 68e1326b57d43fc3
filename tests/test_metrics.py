"""`GET /metrics` counts what was done; every response carries a request id; one log line per
request, never audio or keys."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harken.api import create_app
from harken.config import Settings

TINY = "whisper-tiny.en"


def scrape(url: str, **kwargs: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def chat(clip: Any) -> dict[str, Any]:
    part = {"type": "input_audio", "input_audio": {"data": clip.data_url()}}
    return {"model": TINY, "messages": [{"role": "user", "content": [part]}]}


def test_metrics_count_requests_audio_and_batches(server, speech):
    clip = speech["ls_1089-134691-0001"]
    before = scrape(server.url)
    response = httpx.post(f"{server.url}/v1/chat/completions", json=chat(clip), timeout=600)
    assert response.status_code == 200, response.text
    assert httpx.get(f"{server.url}/v1/models/no-such-model").status_code == 404
    assert httpx.get(f"{server.url}/no/such/route").status_code == 404
    after = scrape(server.url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat_route = {"method": "POST", "route": "/v1/chat/completions"}
    assert grew("harken_http_requests_total", **chat_route, status="200") == 1
    # Route templates, not raw paths: a scrape can't be blown up by made-up model names.
    models = {"method": "GET", "route": "/v1/models/{model_id:path}", "status": "404"}
    assert grew("harken_http_requests_total", **models) == 1
    assert grew("harken_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert grew("harken_http_request_duration_seconds_count", **chat_route) == 1
    assert grew("harken_http_request_duration_seconds_sum", **chat_route) > 0

    assert grew("harken_jobs_total", outcome="ok") == 1
    assert grew("harken_audio_seconds_total") == pytest.approx(clip.duration, abs=0.01)
    assert grew("harken_real_time_factor_count") == 1
    assert grew("harken_real_time_factor_sum") > 0
    # One window (the clip is 5 s): one encoder pass and at least one generate call.
    batch = {"model": TINY, "kind": "encode"}
    assert grew("harken_batch_size_count", **batch) >= 1
    assert grew("harken_batch_size_sum", **batch) >= 1
    assert grew("harken_batch_size_count", model=TINY, kind="generate") >= 1

    for gauge in ("harken_queue_depth", "harken_busy_workers", "harken_engine_busy"):
        assert any(name == gauge for name, _ in after), gauge
    assert value(after, "harken_queue_depth") == 0
    assert value(after, "harken_capacity") == server.service.scheduler.capacity


def test_metrics_need_the_key_when_keys_are_set(keyed_server):
    refused = httpx.get(f"{keyed_server.url}/metrics")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert "x-request-id" in refused.headers
    scrape(keyed_server.url, headers={"Authorization": "Bearer sk-test-two"})


def test_every_response_has_a_request_id(server):
    first = httpx.get(f"{server.url}/health")
    second = httpx.get(f"{server.url}/health")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    # A caller's own id is kept, so a request can be followed across services...
    mine = httpx.get(f"{server.url}/health", headers={"X-Request-Id": "trace-42.a"})
    assert mine.headers["x-request-id"] == "trace-42.a"
    # ...unless it is not a plain id (it ends up in logs).
    odd = httpx.get(f"{server.url}/health", headers={"X-Request-Id": "a b\tc" + "x" * 80})
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])


def test_one_log_line_per_request_without_audio_or_keys(keyed_server, speech, caplog):
    clip = speech["sphinx_goforward"]
    body = chat(clip)
    audio_b64 = body["messages"][0]["content"][0]["input_audio"]["data"].split(",", 1)[1]
    with caplog.at_level(logging.INFO):
        response = httpx.post(
            f"{keyed_server.url}/v1/chat/completions",
            json=body,
            headers={"api-key": "sk-test-one"},
            timeout=600,
        )
        assert response.status_code == 200, response.text
        bad_key = httpx.get(f"{keyed_server.url}/v1/models", headers={"api-key": "sk-wrong-key"})
        assert bad_key.status_code == 401
        # The access line is written once the response has gone out: give the server a moment.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            bad_key.headers["x-request-id"] in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)

    lines = [r.getMessage() for r in caplog.records if r.name == "harken.access"]
    entries = [json.loads(line) for line in lines]
    by_id = {e["request_id"]: e for e in entries}
    done = by_id[response.headers["x-request-id"]]
    assert done["route"] == "/v1/chat/completions" and done["status"] == 200
    assert done["method"] == "POST" and done["duration_ms"] > 0
    assert by_id[bad_key.headers["x-request-id"]]["status"] == 401
    assert len([e for e in entries if e["request_id"] == done["request_id"]]) == 1

    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("sk-test-one", "sk-wrong-key", audio_b64[:64]):
        assert secret not in everything


def test_each_app_counts_only_its_own_work(tmp_path):
    one = create_app(Settings(home=tmp_path, preload=[]))
    two = create_app(Settings(home=tmp_path, preload=[]))
    assert one.state.metrics.registry is not two.state.metrics.registry
    one.state.metrics.requests.labels("GET", "/health", "200").inc()
    assert b'route="/health"' in one.state.metrics.render()
    assert b'route="/health"' not in two.state.metrics.render()
