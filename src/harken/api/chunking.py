"""OpenAI's `chunking_strategy` form field: how a request asks long audio to be cut.

Absent: the server's configured default (long audio is always cut at pauses unless the operator
turned VAD off). "auto": VAD with the server's settings. {"type": "server_vad", "threshold",
"prefix_padding_ms", "silence_duration_ms"}: VAD with those (the padding kept around speech,
and the pause that ends speech). A JSON string of either form is accepted too, as multipart
forms carry it so.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from harken.engine import SegmentationOptions
from harken.errors import InvalidRequest

_SERVER_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}


def parse_chunking_strategy(value: Any, default: SegmentationOptions) -> SegmentationOptions:
    """OpenAI's `chunking_strategy` (None, "auto", a server_vad object, or either as JSON
    text; the openai SDK sends the object as form fields `chunking_strategy[type]` etc., which
    the route gathers into a dict of strings) as segmentation options; 400 naming the field
    for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return dataclasses.replace(default, enabled=True)
        try:
            value = json.loads(text)
        except ValueError:
            raise _bad_chunking() from None
        if value == "auto":
            return dataclasses.replace(default, enabled=True)
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        raise _bad_chunking()
    unknown = set(value) - _SERVER_VAD_KEYS
    if unknown:
        raise _bad_chunking(f"unknown key {sorted(unknown)[0]!r}")
    changes: dict[str, Any] = {"enabled": True}
    threshold = _number(value.get("threshold"))
    if threshold is not None:
        if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
            raise _bad_chunking("threshold must be a number from 0 to 1")
        changes["threshold"] = float(threshold)
    for key, field in (
        ("prefix_padding_ms", "speech_pad_ms"),
        ("silence_duration_ms", "min_silence_ms"),
    ):
        amount = _number(value.get(key))
        if amount is not None:
            if not _is_number(amount) or not 0 <= amount <= 10_000:
                raise _bad_chunking(f"{key} must be a number of milliseconds from 0 to 10000")
            changes[field] = int(amount)
    return dataclasses.replace(default, **changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> Any:
    """Form fields arrive as text ("0.5"): read them as numbers; anything else is left as is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _bad_chunking(detail: str | None = None) -> InvalidRequest:
    return InvalidRequest(
        'chunking_strategy must be "auto" or {"type": "server_vad", "threshold": 0.5, '
        '"prefix_padding_ms": 300, "silence_duration_ms": 500}'
        + (f": {detail}." if detail else "."),
        param="chunking_strategy",
    )
