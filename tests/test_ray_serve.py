"""harken on Ray Serve: a two-node cluster on this machine, requests through Ray's proxy.

Two nodes of one CPU each, and replicas of one CPU each: two running replicas are therefore on
two nodes. Everything a client sees goes through Ray's own HTTP proxy: both dialects, streamed
and not, with the same text as the plain server; errors in the contract's body; a replica
killed under a request; autoscaling from one replica to two and back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason="Ray Serve is not installed: pip install 'harken[ray]' (make test installs it)"
)
from ray import serve  # noqa: E402

from harken.api.ray_proxy import ContractErrorsMiddleware  # noqa: E402
from harken.api.ray_serve import (  # noqa: E402
    APP_NAME,
    CONTROLLER_OPTIONS,
    REPLICA_HEADER,
    deployment_options,
    harken_application,
    replica_settings,
)
from harken.audio import SAMPLE_RATE, decode_audio  # noqa: E402
from harken.config import Settings  # noqa: E402
from tests.conftest import sse_payloads, wait_healthy, wav_bytes  # noqa: E402
from tests.ray_cluster import two_node_serve  # noqa: E402

TINY = "whisper-tiny.en"
KEY = "sk-test-one"  # one of keyed_server's keys: the plain server the replicas are compared to
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIPS = ["jfk_inaugural_1961", "ls_1089-134686-0001", "sphinx_goforward", "ls_3752-4944-0000"]


def ray_settings(home: Path, **values: Any) -> Settings:
    values = {"max_upload_mb": 2.0, "max_queue": 2, **values}
    return Settings(
        home=home, api_keys=[KEY], default_model=TINY, preload=[TINY],
        aliases={"mimo-v2.5-asr": TINY}, **values,
    )  # fmt: skip


def deploy(settings: Settings) -> None:
    serve.run(harken_application(settings), name=APP_NAME, route_prefix="/")


def running_replicas() -> int:
    status = serve.status().applications[APP_NAME].deployments[APP_NAME]
    return int(status.replica_states.get("RUNNING", 0))


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Two nodes of one CPU each; Serve's proxy on a free loopback port. Yields its URL."""
    with two_node_serve() as url:
        yield url


@pytest.fixture(scope="module")
def proxy(cluster: str, harken_home: Path) -> str:
    """harken, two fixed replicas (one per node), behind Ray's proxy."""
    deploy(ray_settings(harken_home, ray_replicas=2))
    return cluster


def transcribe(url: str, clip: Any, **data: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/transcriptions", headers=AUTH, timeout=300,
        files={"file": (clip.path.name, clip.bytes())}, data={"model": TINY, **data},
    )  # fmt: skip


def chat(url: str, clip: Any, **extra: Any) -> httpx.Response:
    part = {"type": "input_audio", "input_audio": {"data": clip.data_url()}}
    body = {"model": "mimo-v2.5-asr", "messages": [{"role": "user", "content": [part]}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=body, timeout=300)


def streamed_audio_text(response: httpx.Response) -> str:
    *_, done = [e for e in sse_payloads(response.text) if e != "[DONE]"]
    assert done["type"] == "transcript.text.done", done
    return str(done["text"])


def streamed_chat_text(response: httpx.Response) -> str:
    events = [e for e in sse_payloads(response.text) if e != "[DONE]" and e["choices"]]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events)


def answers(url: str, clip: Any) -> tuple[dict[str, str], set[str]]:
    """The text of each way of asking, and the replicas that answered."""
    responses = {
        "audio": transcribe(url, clip),
        "audio streamed": transcribe(url, clip, stream="true"),
        "chat": chat(url, clip),
        "chat streamed": chat(url, clip, stream=True),
    }
    for way, response in responses.items():
        assert response.status_code == 200, (way, response.text)
    texts = {
        "audio": responses["audio"].json()["text"],
        "audio streamed": streamed_audio_text(responses["audio streamed"]),
        "chat": responses["chat"].json()["choices"][0]["message"]["content"],
        "chat streamed": streamed_chat_text(responses["chat streamed"]),
    }
    return texts, {r.headers.get(REPLICA_HEADER, "") for r in responses.values()}


# --- through the proxy: both replicas, both dialects, the plain server's text
def test_both_replicas_answer_with_the_plain_servers_text(proxy, keyed_server, speech):
    replicas: set[str] = set()
    for name in CLIPS:
        on_ray, served_by = answers(proxy, speech[name])
        plain, _ = answers(keyed_server.url, speech[name])
        assert on_ray == plain, name
        replicas |= served_by
    assert "" not in replicas, "every response names its replica"
    assert len(replicas) == 2, replicas


def test_the_openai_sdk_through_the_proxy(proxy, speech):
    import openai

    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key=KEY, max_retries=0)
    clip = speech["jfk_inaugural_1961"]
    raw = client.audio.transcriptions.with_raw_response.create(file=clip.path, model=TINY)
    assert raw.headers[REPLICA_HEADER]
    assert "fellow americans" in raw.parse().text.lower()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{proxy}/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_health_models_and_metrics_of_each_replica(proxy):
    health = httpx.get(f"{proxy}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers[REPLICA_HEADER]
    models = httpx.get(f"{proxy}/v1/models", headers=AUTH, timeout=30).json()
    assert TINY in {m["id"] for m in models["data"]}
    metrics = httpx.get(f"{proxy}/metrics", headers=AUTH, timeout=30)
    assert metrics.status_code == 200 and metrics.headers[REPLICA_HEADER]
    assert "harken_http_requests_total" in metrics.text


def test_errors_and_upload_limits_through_the_proxy(proxy, speech, assert_error):
    assert_error(httpx.get(f"{proxy}/v1/models", timeout=30), 401, "invalid_api_key")
    not_audio = httpx.post(
        f"{proxy}/v1/audio/transcriptions", headers=AUTH, timeout=60,
        files={"file": ("x.wav", b"not audio at all" * 100)}, data={"model": TINY},
    )  # fmt: skip
    assert_error(not_audio, 400, "invalid_audio")
    assert_error(httpx.get(f"{proxy}/no/such/route", timeout=30), 404)
    # The clip, then silence up to just under the 2 MB limit (VAD skips the silence).
    clip = decode_audio(speech["jfk_inaugural_1961"].bytes())
    limit = 2 * 1024 * 1024
    pad = np.zeros((limit - 50_000) // 2 - clip.size, dtype=np.float32)
    under = wav_bytes(np.concatenate([clip, pad]))
    response = httpx.post(
        f"{proxy}/v1/audio/transcriptions", headers=AUTH, timeout=300,
        files={"file": ("long.wav", under)}, data={"model": TINY},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert "fellow americans" in response.json()["text"].lower()
    over = wav_bytes(np.zeros(limit // 2 + SAMPLE_RATE, dtype=np.float32))
    too_big = httpx.post(
        f"{proxy}/v1/audio/transcriptions", headers=AUTH, timeout=60,
        files={"file": ("big.wav", over)}, data={"model": TINY},
    )  # fmt: skip
    assert_error(too_big, 413, "file_too_large")


def test_an_overloaded_cluster_answers_429_with_retry_after(proxy, speech, assert_error):
    """Each replica decodes 8 and queues 2: 40 at once are more than two replicas take."""
    clip = speech["ls_1089-134686-0001"]
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda _: transcribe(proxy, clip), range(40)))
    statuses = sorted({r.status_code for r in results})
    assert set(statuses) <= {200, 429}, statuses
    refused = [r for r in results if r.status_code == 429]
    assert refused and len(refused) < len(results), statuses
    for response in refused:
        assert_error(response, 429, "rate_limit_exceeded")
        assert int(response.headers["retry-after"]) >= 1
    texts = {r.json()["text"] for r in results if r.status_code == 200}
    assert len(texts) == 1, texts


# --- a replica killed under a request
def test_a_killed_replica_ends_its_requests_cleanly_and_is_replaced(proxy, speech, assert_error):
    clip = decode_audio(speech["jfk_inaugural_1961"].bytes())
    long_clip = wav_bytes(np.concatenate([clip] * 5))  # 55 s: several segments, streamed
    with httpx.stream(
        "POST", f"{proxy}/v1/audio/transcriptions", headers=AUTH, timeout=300,
        files={"file": ("long.wav", long_clip)}, data={"model": TINY, "stream": "true"},
    ) as stream:  # fmt: skip
        assert stream.status_code == 200
        victim = stream.headers[REPLICA_HEADER]
        events = stream.iter_raw()
        first = next(events)
        assert b"transcript.text.delta" in first
        actor = ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#{APP_NAME}#{victim}", namespace="serve")
        ray.kill(actor, no_restart=True)
        rest = b"".join(events)
    *_, last = sse_payloads((first + rest).decode())
    assert last["error"]["code"] == "overloaded" and "retry" in last["error"]["message"]

    # The other replica goes on at once; a retry succeeds; Ray starts a new replica.
    survivors = set()
    for _ in range(6):
        response = transcribe(proxy, speech["sphinx_goforward"])
        if response.status_code == 503:
            assert_error(response, 503, "overloaded")  # routed to the dead one before Ray knew
            continue
        assert response.status_code == 200, response.text
        survivors.add(response.headers[REPLICA_HEADER])
    assert survivors and victim not in survivors
    wait_for(lambda: running_replicas() == 2, 120, "Ray replaced the killed replica")
    # The new replica takes requests once Ray's proxy has heard of it (its routing table lags
    # the controller's status by a moment).
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        response = transcribe(proxy, speech["sphinx_goforward"])
        assert response.status_code == 200, response.text
        seen.add(response.headers[REPLICA_HEADER])
    assert len(seen) == 2 and victim not in seen, seen


# --- autoscaling on ongoing requests: one replica, two under load, one again
def test_autoscaling_from_one_replica_to_two_and_back(cluster, proxy, harken_home, speech):
    settings = ray_settings(
        harken_home, ray_min_replicas=1, ray_max_replicas=2, max_queue=64,
        ray_autoscaling={"upscale_delay_s": 1, "downscale_delay_s": 3,
                         "metrics_interval_s": 0.5, "look_back_period_s": 2},
    )  # fmt: skip
    deploy(settings)
    wait_for(lambda: running_replicas() == 1, 120, "scaled to one replica")
    clip = speech["ls_1089-134686-0001"]
    loading = True

    def keep_busy() -> int:
        done = 0
        while loading:
            if transcribe(cluster, clip).status_code == 200:
                done += 1
        return done

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        clients = [pool.submit(keep_busy) for _ in range(16)]
        try:
            wait_for(lambda: running_replicas() == 2, 180, "scaled up to two under load")
        finally:
            loading = False
        assert all(c.result() > 0 for c in clients)
    wait_for(lambda: running_replicas() == 1, 120, "scaled back to one when idle")


# --- harken serve --ray, on the running cluster
def test_harken_serve_ray_deploys_on_a_running_cluster_and_removes_itself(cluster, harken_home):
    serve.delete(APP_NAME)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update(
        HARKEN_RAY_ADDRESS=ray.get_runtime_context().gcs_address, HARKEN_HOME=str(harken_home),
        HARKEN_DEFAULT_MODEL=TINY, HARKEN_PRELOAD=TINY, HARKEN_API_KEYS=KEY,
    )  # fmt: skip
    command = [sys.executable, "-m", "harken", "serve", "--ray", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    try:
        wait_healthy(cluster, lambda: process.poll() is None, timeout=180)
        response = httpx.get(f"{cluster}/v1/models", headers=AUTH, timeout=30)
        assert response.status_code == 200 and response.headers[REPLICA_HEADER]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert APP_NAME not in serve.status().applications


# --- the mapping from harken's settings to Ray's options (no cluster needed)
def test_replica_cores_become_ctranslate2_threads(tmp_path):
    settings = Settings(home=tmp_path, ray_cpus_per_replica=3, workers=2, ray_replicas=4)
    options = deployment_options(settings)
    assert options["num_replicas"] == 4
    assert options["ray_actor_options"] == {"num_cpus": 3}
    replica = replica_settings(settings)
    assert (replica.cpu_threads, replica.workers, replica.threads_per_worker) == (3, 2, 1)
    one_core = replica_settings(Settings(home=tmp_path, ray_cpus_per_replica=1, workers=2))
    assert (one_core.cpu_threads, one_core.workers, one_core.threads_per_worker) == (1, 1, 1)
    # A replica admits its own decode slots and queue; harken refuses past that, not Ray.
    admitted = 2 * settings.batch_size + settings.max_queue
    assert options["max_ongoing_requests"] > admitted


def test_min_and_max_replicas_become_ray_autoscaling(tmp_path):
    settings = Settings(
        home=tmp_path, ray_min_replicas=1, ray_max_replicas=5,
        ray_autoscaling={"downscale_delay_s": 30},
    )  # fmt: skip
    options = deployment_options(settings)
    assert "num_replicas" not in options
    autoscaling = options["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 5)
    assert autoscaling["downscale_delay_s"] == 30
    with pytest.raises(ValueError, match="ray_max_replicas"):
        deployment_options(Settings(home=tmp_path, ray_min_replicas=3, ray_max_replicas=2))


# --- Ray's own answers, as its proxy sends them, through harken's proxy middleware
def through_proxy_middleware(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    async def collect(message: Any) -> None:
        sent.append(message)

    app = ContractErrorsMiddleware(inner)
    asyncio.run(app({"type": "http", "headers": []}, None, collect))
    return sent


def as_response(messages: list[dict[str, Any]]) -> tuple[int, dict[str, str], Any]:
    start, *bodies = messages
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(b"".join(b["body"] for b in bodies))


def test_rays_backpressure_becomes_a_429_with_retry_after():
    from ray.serve._private.http_util import (
        get_http_response_status,
        send_http_response_on_exception,
    )
    from ray.serve.exceptions import BackPressureError

    full = BackPressureError(num_queued_requests=2, max_queued_requests=2, retry_after_s=3)
    ray_says = send_http_response_on_exception(get_http_response_status(full, None, "id"), False)
    status, headers, body = as_response(through_proxy_middleware(ray_says))
    assert status == 429 and headers["retry-after"] == "3"
    assert body["error"]["code"] == "rate_limit_exceeded"


def test_a_request_ray_dropped_without_an_answer_becomes_a_503():
    status, _, body = as_response(through_proxy_middleware([]))
    assert status == 503 and body["error"]["code"] == "overloaded"
    assert "retry" in body["error"]["message"]


def test_harkens_own_answers_pass_through_the_proxy_middleware():
    own = [
        {"type": "http.response.start", "status": 503,
         "headers": [(b"content-type", b"application/json")]},
        {"type": "http.response.body", "body": b'{"error": {"code": "overloaded"}}'},
    ]  # fmt: skip
    assert through_proxy_middleware(own) == own


# --- the Serve config in deploy/
def test_the_serve_config_builds_the_deployment_harken_serve_ray_does(harken_home):
    import importlib

    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parents[1] / "deploy" / "ray-serve.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert config.controller_options.runtime_env == CONTROLLER_OPTIONS["runtime_env"]
    (app,) = config.applications
    module, name = app.import_path.split(":")
    builder = getattr(importlib.import_module(module), name)
    args = {**app.args, "home": str(harken_home)}
    application = builder(args)
    options = deployment_options(Settings(**args))
    assert application._bound_deployment.num_replicas == options["num_replicas"] == 2
