"""The published schema says what the server accepts: rules FastAPI cannot derive, added in.

`/openapi.json` is a promise that tools generate clients and tests from: a request it calls
valid must not be refused for its shape. FastAPI derives the schema from the route signatures,
which leaves out what the routes check themselves: that word timestamps need `verbose_json`,
that a stream carries json, text or verbose_json, that a chat needs an audio part, that `n` is
1. Form fields also inherit `null` from their Python `None` default, which a form cannot send
(a tool sends the text "null"). `tighten` writes those rules into the schema, by path, so that
it holds whatever the route functions and their models are named.

What no schema can say remains the server's to judge: whether the bytes are audio, whether a
model or language name exists, whether a model can translate.
"""

from __future__ import annotations

from typing import Any

from harken.formats import STREAM_FORMATS

# `chunking_strategy`: "auto", or a server_vad object as JSON text with the numbers in range.
_THRESHOLD = r'"threshold": ?(0(\.[0-9]{1,3})?|1(\.0{1,3})?)'
_MILLISECONDS = r'"(prefix_padding_ms|silence_duration_ms)": ?(0|[1-9][0-9]{0,3})'
SERVER_VAD_PATTERN = rf'^\{{"type": ?"server_vad"(, ?({_THRESHOLD}|{_MILLISECONDS}))*\}}$'


def tighten(schema: dict[str, Any]) -> dict[str, Any]:
    paths = schema.get("paths", {})
    components = schema.get("components", {}).get("schemas", {})
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        form = _request_schema(paths, components, path, "multipart/form-data")
        if form is not None:
            _tighten_form(form)
    chat = _request_schema(paths, components, "/v1/chat/completions", "application/json")
    if chat is not None:
        _tighten_chat(chat)
    model = paths.get("/v1/models/{model_id}", {}).get("get")
    for parameter in model.get("parameters", []) if model else []:
        if parameter.get("name") == "model_id":
            # One path segment of printable characters: the router matches no other.
            parameter["schema"]["pattern"] = "^[^/\\u0000-\\u001f\\u007f]+$"
    return schema


def _request_schema(
    paths: dict[str, Any], components: dict[str, Any], path: str, media_type: str
) -> dict[str, Any] | None:
    operation = paths.get(path, {}).get("post")
    if operation is None:
        return None
    schema = operation.get("requestBody", {}).get("content", {}).get(media_type, {}).get("schema")
    if schema is None:
        return None
    reference = schema.get("$ref", "")
    if reference.startswith("#/components/schemas/"):
        resolved: dict[str, Any] | None = components.get(reference.rsplit("/", 1)[1])
        return resolved
    return dict(schema)


def _tighten_form(form: dict[str, Any]) -> None:
    properties: dict[str, Any] = form.get("properties", {})
    for field in properties.values():
        # A form field is absent or text: the `null` of a Python default cannot be sent.
        branches = field.get("anyOf")
        if branches and {"type": "null"} in branches:
            kept = [b for b in branches if b != {"type": "null"}]
            del field["anyOf"]
            if len(kept) == 1:
                field.update(kept[0])
            else:
                field["anyOf"] = kept
    rules: list[dict[str, Any]] = []
    if "stream" in properties and "response_format" in properties:
        rules.append(
            {
                "if": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
                "then": {"properties": {"response_format": {"enum": list(STREAM_FORMATS)}}},
            }
        )
    for name in ("timestamp_granularities[]", "timestamp_granularities"):
        if name in properties and "response_format" in properties:
            rules.append(
                {
                    "if": {
                        "properties": {name: {"contains": {"const": "word"}}},
                        "required": [name],
                    },
                    "then": {
                        "properties": {"response_format": {"const": "verbose_json"}},
                        "required": ["response_format"],
                    },
                }
            )
    if "chunking_strategy" in properties:
        field = properties["chunking_strategy"]
        for key in ("type", "anyOf"):
            field.pop(key, None)
        field["anyOf"] = [
            {"type": "string", "enum": ["auto"]},
            {"type": "string", "pattern": SERVER_VAD_PATTERN},
        ]
    if rules:
        form["allOf"] = [*form.get("allOf", []), *rules]


def _tighten_chat(chat: dict[str, Any]) -> None:
    properties: dict[str, Any] = chat.get("properties", {})
    audio_part = {
        "type": "object",
        "properties": {"type": {"const": "input_audio"}},
        "required": ["type", "input_audio"],
    }
    messages = properties.get("messages")
    if messages is not None:
        # At least one message carries audio: as its content part, or among its parts.
        messages["contains"] = {
            "type": "object",
            "properties": {
                "content": {
                    "anyOf": [audio_part, {"type": "array", "contains": audio_part}],
                }
            },
            "required": ["content"],
        }
    if "n" in properties:
        properties["n"] = {
            "anyOf": [{"type": "integer", "const": 1}, {"type": "null"}],
            "title": "N",
            "description": "Only 1: one transcript per request.",
        }
