"""Hostile request bodies: hypothesis-built chat bodies, and schemathesis from the server's own
OpenAPI schema. Every answer is a 2xx or a 4xx in the contract's error body: never a 5xx, never
FastAPI's 422 shape, and 2xx bodies match the schema.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from harken.audio import decode_audio

MODEL = "whisper-tiny.en"
COUNTS: dict[str, int] = {}


def assert_contract(response: httpx.Response | Any) -> None:
    """The one rule of this module: a 2xx, or a 4xx carrying the contract's error body."""
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    assert status != 422, f"FastAPI's validation shape leaked: {response.text[:500]}"
    if status >= 400:
        body = json.loads(response.text)
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert "Traceback" not in error["message"] and "/work/" not in error["message"], error


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    print("\nrequest fuzz cases:", COUNTS)


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client
    assert httpx.get(f"{server.url}/health").status_code == 200


# --- hypothesis over chat bodies
def _short_speech_url() -> str:
    """One second of real speech as a WAV data URL: the rare valid audio among the junk."""
    from tests.conftest import load_manifest
    from tests.test_hardening_audio import encode

    samples = decode_audio(load_manifest()["ls_1089-134691-0000"].bytes())[:16000]
    return "data:audio/wav;base64," + base64.b64encode(encode(samples, "wav")).decode()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
AUDIO_DATA = st.one_of(
    st.just("VALID"),
    st.sampled_from(["", "data:", "data:audio/wav;base64", "data:audio/wav,abc", "http://127.0.0.1/x.wav",
                     "https://example.com/a.mp3", "data:audio/wav;base64,!!!", "AAAA", "=" * 8]),
    st.binary(max_size=64).map(lambda b: "data:audio/wav;base64," + base64.b64encode(b).decode()),
    st.text(max_size=40),
    JSON,
)  # fmt: skip
AUDIO_PART = st.fixed_dictionaries(
    {
        "type": st.just("input_audio"),
        "input_audio": st.fixed_dictionaries(
            {"data": AUDIO_DATA},
            optional={"format": st.sampled_from(["wav", "mp3", "xyz"]) | JSON},
        ),
    }
)
PART = st.one_of(
    AUDIO_PART,
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30) | JSON}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "audio", ""]) | st.text()}),
    JSON,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", ""]) | JSON},
    optional={"content": st.one_of(st.lists(PART, max_size=3), PART, st.text(max_size=20), JSON)},
)
CHAT = st.fixed_dictionaries(
    {
        "model": st.sampled_from([MODEL, "mimo-v2.5-asr", "nope", ""]) | JSON,
        "messages": st.lists(MESSAGE, max_size=3) | JSON,
    },
    optional={
        "asr_options": st.fixed_dictionaries(
            {},
            optional={
                "language": st.sampled_from(["auto", "en", "zh", "xx", "", "EN", "english"]) | JSON,
                "hotwords": st.lists(st.text(max_size=10), max_size=3) | JSON,
                "prompt": st.text(max_size=30) | JSON,
            },
        )
        | JSON,
        "stream": st.booleans() | JSON,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | JSON}) | JSON,
        "n": st.integers(-2, 3) | JSON,
        "temperature": st.floats(allow_nan=False) | JSON,
        "max_tokens": st.integers() | JSON,
        "thinking": JSON,
    },
)


def _fill(value: Any, valid_url: str) -> Any:
    if value == "VALID":
        return valid_url
    if isinstance(value, dict):
        return {k: _fill(v, valid_url) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, valid_url) for v in value]
    return value


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=CHAT | JSON)
def test_chat_bodies_built_to_break_it(client: httpx.Client, body: Any):
    body = _fill(body, VALID_URL)
    response = client.post("/v1/chat/completions", content=json.dumps(body, allow_nan=True))
    assert_contract(response)
    COUNTS["chat_bodies"] = COUNTS.get("chat_bodies", 0) + 1
    if response.status_code == 200:
        COUNTS["chat_bodies_200"] = COUNTS.get("chat_bodies_200", 0) + 1


VALID_URL = _short_speech_url()

RAW_BODIES = [
    b"", b"{", b"null", b"[]", b'"text"', b"1e999999", b'{"model": NaN}', b"\xff\xfe\x00",
    b'{"model": "' + b"a" * 100_000 + b'"}', b"[" * 5000 + b"]" * 5000,
    b'{"model":"whisper-tiny.en","messages":' + b"[" * 3000 + b"]" * 3000 + b"}",
    json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio",
               "input_audio": {"data": "data:audio/wav;base64," + "A" * 4}}] * 2000}]}).encode(),
]  # fmt: skip


@pytest.mark.parametrize("raw", RAW_BODIES, ids=range(len(RAW_BODIES)))
@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "multipart/form-data"])
def test_malformed_bytes_and_deep_nesting(client: httpx.Client, raw: bytes, content_type: str):
    response = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": content_type}
    )
    assert_contract(response)
    assert response.status_code in (400, 413), response.text[:300]
    COUNTS["raw_bodies"] = COUNTS.get("raw_bodies", 0) + 1


def test_float_edge_cases_in_numbers(client: httpx.Client):
    for temperature in (math.inf, -math.inf, math.nan, -0.0, 1e308, 5e-324):
        part = {"type": "input_audio", "input_audio": {"data": "AAAA"}}
        body = {
            "model": MODEL,
            "temperature": temperature,
            "messages": [{"role": "user", "content": [part]}],
        }
        assert_contract(client.post("/v1/chat/completions", content=json.dumps(body)))


# --- schemathesis, from the server's own schema
def test_openapi_schema_fuzz(server: Any):
    """Every operation of /openapi.json, with schemathesis-generated cases (positive and
    negative), must keep the contract; 2xx JSON bodies must match the documented schema."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5, [op.label for op in operations]
    cases = [(operation, mode) for operation in operations for mode in GenerationMode]
    for operation, mode in cases:

        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(timeout=300)
            assert_contract(response)
            if response.status_code < 300 and "json" in response.headers.get("content-type", ""):
                case.validate_response(response, checks=[response_schema_conformance])
            label = f"schemathesis {case.operation.label}"
            COUNTS[label] = COUNTS.get(label, 0) + 1

        try:
            run()
        except Unsatisfiable:  # no negative case exists for an operation without inputs
            assert mode == GenerationMode.NEGATIVE, operation.label
