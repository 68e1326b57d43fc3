"""The published schema says what the server accepts: schemathesis from `/openapi.json`.

Every case schemathesis generates from the schema (positive) must be answered without a 5xx and
must not be refused for its shape: the only refusals allowed are for what no schema can say
(the bytes are not audio, a language or model name that does not exist, a model that cannot
translate). Cases that break the schema (negative) must get a 4xx in the contract's body, or
a 2xx where the server is lenient (counted). One kept-alive session carries them all, and the
server must never drop it. benchmarks/schema_fuzz.py runs the same with 10,000+ cases.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.servers import TINY, run_built_server

# Refusals of a schema-valid request that are about content, not shape.
CONTENT_CODES = {
    "invalid_audio",
    "model_not_found",
    "unsupported_language",
    "file_too_large",
    "audio_too_long",
    "rate_limit_exceeded",
}


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)  # per mode
    statuses: Counter[str] = field(default_factory=Counter)  # "POST /x positive 400 code"
    server_errors: list[str] = field(default_factory=list)
    refused_valid: list[str] = field(default_factory=list)
    off_contract: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    accepted_invalid: Counter[str] = field(default_factory=Counter)

    def failures(self) -> list[str]:
        return self.server_errors + self.refused_valid + self.off_contract + self.dropped


def known_models(url: str) -> list[str]:
    """What a client picks from /v1/models: the names that reach a loaded model (so that the
    fuzz never loads another)."""
    loaded = set(httpx.get(f"{url}/health", timeout=30).json()["models"])
    listed = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    names = [item["id"] for item in listed]
    return [name for name in names if name in loaded or name in ALIASES] or names


ALIASES = ("mimo-v2.5-asr", "whisper-1")  # the built-in aliases, pointed at tiny.en below


def fuzz_schema(url: str, models: list[str]) -> Any:
    """The server's own schema, with `model` narrowed to names the server knows, as a client
    would fill it in from /v1/models (the schema itself defers to that list)."""
    schema = copy.deepcopy(httpx.get(f"{url}/openapi.json", timeout=30).json())
    components = schema["components"]["schemas"]
    for item in schema["paths"].values():
        for media in item.get("post", {}).get("requestBody", {}).get("content", {}).values():
            body = components[media["schema"]["$ref"].rsplit("/", 1)[1]]
            model = body["properties"].get("model")
            if model is not None:
                model.pop("anyOf", None)
                model.pop("minLength", None)
                model.update({"type": "string", "enum": models})
    return schemathesis.openapi.from_dict(schema)


def judge(tally: Tally, label: str, mode: GenerationMode, response: Any) -> None:
    status = response.status_code
    code = param = None
    if status >= 400:
        try:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            code, param = error["code"], error["param"]
        except (ValueError, KeyError, TypeError, AssertionError):
            tally.off_contract.append(f"{label} {mode.value} {status}: {response.text[:200]}")
    tally.cases[mode.value] += 1
    tally.statuses[f"{label} {mode.value} {status} {code or ''}".strip()] += 1
    where = f"{label} {status} {code} {param}: {response.text[:300]}"
    if status >= 500:
        tally.server_errors.append(where)
    elif mode == GenerationMode.POSITIVE and status >= 400:
        by_content = code in CONTENT_CODES or (code == "invalid_request" and param == "model")
        if not by_content:
            tally.refused_valid.append(where)
    elif mode == GenerationMode.NEGATIVE and status < 400:
        tally.accepted_invalid[label] += 1
    if response.headers.get("connection", "").lower() == "close" and status < 500:
        tally.dropped.append(f"{label}: Connection: close after a {status}")


def fuzz(url: str, examples: int, *, seed_value: int = 17, timeout: float = 120) -> Tally:
    """`examples` cases per operation and mode, through one kept-alive session."""
    schema = fuzz_schema(url, known_models(url))
    tally = Tally()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run = _runner(operation, mode, examples, seed_value, url, session, timeout, tally)
                with contextlib.suppress(Unsatisfiable):  # no negative case without inputs
                    run()
    return tally


def _runner(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    seed_value: int,
    url: str,
    session: requests.Session,
    timeout: float,
    tally: Tally,
) -> Any:
    @seed(seed_value)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        try:
            response = case.call(base_url=url, session=session, timeout=timeout)
        except requests.RequestException as exc:
            tally.dropped.append(f"{case.operation.label}: {type(exc).__name__}")
            return
        judge(tally, case.operation.label, mode, response)

    return run


@pytest.fixture(scope="module")
def fuzzed_server(harken_home: Path) -> Iterator[Any]:
    # Every name a client may send reaches tiny.en: no second model is loaded.
    aliases = dict.fromkeys(ALIASES, TINY)
    with run_built_server(harken_home, aliases=aliases) as running:
        yield running


def test_schema_valid_requests_are_accepted_and_nothing_is_a_5xx(fuzzed_server: Any):
    tally = fuzz(fuzzed_server.url, examples=150)
    print(f"\nschemathesis: {dict(tally.cases)} cases, {len(tally.server_errors)} server errors, "
          f"{len(tally.refused_valid)} schema-valid refused, "
          f"{sum(tally.accepted_invalid.values())} schema-invalid accepted")  # fmt: skip
    for key, count in sorted(tally.statuses.items()):
        print(f"  {count:5d}  {key}")
    assert sum(tally.cases.values()) >= 800, tally.cases
    assert not tally.failures(), tally.failures()[:10]
    assert httpx.get(f"{fuzzed_server.url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"timestamp_granularities[]": "word"},
        {"stream": "true", "response_format": "srt"},
        {"chunking_strategy": "sometimes"},
    ],
    ids=["words-without-verbose-json", "stream-srt", "chunking"],
)
def test_what_the_schema_forbids_the_server_refuses(fuzzed_server: Any, fields, assert_error):
    """The rules the schema gained are the server's: each is a 400 naming the field."""
    response = httpx.post(
        f"{fuzzed_server.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"model": TINY, **fields},
        timeout=60,
    )
    param = next(iter(fields))
    assert_error(response, 400, param=param)


@pytest.mark.parametrize(
    "extra", [{"n": True}, {"n": 2}, {"n": "1"}], ids=["true", "two", "string"]
)
def test_n_is_one_and_only_one(fuzzed_server: Any, extra, assert_error):
    body = {"model": TINY, "messages": [{"role": "user", "content": "no audio"}], **extra}
    response = httpx.post(f"{fuzzed_server.url}/v1/chat/completions", json=body, timeout=60)
    assert_error(response, 400, param="n")


def test_the_schema_states_the_rules(fuzzed_server: Any):
    schema = httpx.get(f"{fuzzed_server.url}/openapi.json", timeout=30).json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    ref = chat["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    properties = schema["components"]["schemas"][ref]["properties"]
    assert "contains" in properties["messages"]
    assert {"type": "integer", "const": 1} in properties["n"]["anyOf"]
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        form = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        body = schema["components"]["schemas"][form["schema"]["$ref"].rsplit("/", 1)[1]]
        assert body.get("allOf"), path  # the if/then rules
        for name, prop in body["properties"].items():
            assert "null" not in str(prop.get("anyOf", "")), (path, name)  # forms can't send null
