"""Models served by a remote endpoint: their engine settings built from the operator's config,
and their failures turned into the contract's errors (CONTRACT.md §3b, §4)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from harken.config import ModelConfig
from harken.engine.upstream import UpstreamConfig, UpstreamFailure
from harken.errors import (
    FileTooLarge,
    HarkenError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

T = TypeVar("T")

# The request body caps of the public services: MiMo's 10 MB payload, OpenAI's 25 MB upload.
DEFAULT_BODY_MB = {"mimo-chat": 10.0, "openai-chat": 25.0, "openai-audio": 25.0}


def upstream_config(name: str, config: ModelConfig) -> UpstreamConfig:
    """The engine's view of a `[models.NAME]` entry with `upstream = ...`; the key is read from
    the environment variable the entry names."""
    if config.upstream is None:
        raise ValueError(f"the model {name!r} has no upstream")
    body_mb = config.max_body_mb or DEFAULT_BODY_MB[config.dialect]
    upstream = UpstreamConfig(
        url=config.upstream,
        dialect=config.dialect,
        model=config.upstream_model or name,
        api_key=config.upstream_api_key(),
        connect_timeout=config.connect_timeout_seconds,
        timeout=config.timeout_seconds,
        concurrency=config.concurrency,
        retries=config.retries,
        backoff=config.retry_backoff_seconds,
        max_retry_wait=config.max_retry_wait_seconds,
        max_body_bytes=int(body_mb * 1024 * 1024),
        max_piece_seconds=config.max_piece_seconds,
        timestamps=config.timestamps,
    )
    return upstream


def contract_error(failure: UpstreamFailure) -> HarkenError:
    """The contract's error for a failed upstream call: the upstream's refusal of the request
    itself keeps its meaning (400, 413), anything else is the upstream's fault (502/503/504)."""
    if failure.kind == "rejected":
        if failure.status == 413:
            return FileTooLarge(failure.message)
        if failure.status in (400, 422):
            return InvalidRequest(failure.message)
        return UpstreamError(failure.message)  # 401, 403, 404: the operator's setup
    if failure.kind == "timeout":
        return UpstreamTimeout(failure.message)
    if failure.kind == "unavailable":
        return UpstreamUnavailable(failure.message)
    return UpstreamError(failure.message)


@contextmanager
def upstream_errors() -> Iterator[None]:
    try:
        yield
    except UpstreamFailure as failure:
        raise contract_error(failure) from None


def with_upstream_errors(items: Iterator[T]) -> Iterator[T]:
    """`items`, with upstream failures raised as the contract's errors."""
    with upstream_errors():
        yield from items
