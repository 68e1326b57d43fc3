"""What a MiMo `mimo-v2.5-asr` client can do: CONTRACT.md §1, through the real `openai` SDK and
raw HTTP, on real speech with the real models."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest

from tests.conftest import sse_payloads, wer

CJK = re.compile(r"[\u4e00-\u9fff]")


def audio_part(clip: Any, mime: str | None = None) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": clip.data_url(mime)}}


def mimo_request(*parts: dict[str, Any], model: str = "mimo-v2.5-asr", **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": list(parts)}], **extra}


def post(server: Any, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600, **kwargs)


# --- the openai SDK, as MiMo users call it
def test_sdk_transcribes_english_with_the_default_model(openai_client, speech):
    clip = speech["ls_1089-134691-0001"]
    reply = openai_client.chat.completions.create(
        model="mimo-v2.5-asr",
        messages=[{"role": "user", "content": [audio_part(clip)]}],
        extra_body={"asr_options": {"language": "en"}},
    )
    assert reply.model == "mimo-v2.5-asr"
    assert reply.choices[0].finish_reason == "stop"
    assert wer(clip.text, reply.choices[0].message.content) <= 0.15
    assert reply.usage.prompt_tokens_details.audio_tokens == 34  # ceil(5.415 × 6.25)


def test_sdk_stream_joins_to_the_non_streamed_text(openai_client, speech):
    clip = speech["ls_1988-24833-0000"]
    request = dict(
        model="whisper-base",
        messages=[{"role": "user", "content": [audio_part(clip)]}],
        extra_body={"asr_options": {"language": "auto"}},
    )
    whole = openai_client.chat.completions.create(**request).choices[0].message.content
    chunks = list(
        openai_client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert finish[0].usage is not None  # MiMo clients read usage from the finishing chunk
    assert (
        chunks[-1].choices == [] and chunks[-1].usage.total_tokens == finish[0].usage.total_tokens
    )


def test_multi_segment_clip_streams_several_deltas(server, speech):
    clip = speech["librivox_es_aeneas"]  # 70 s: several segments
    response = post(server, mimo_request(audio_part(clip), stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_payloads(response.text)
    assert events[-1] == "[DONE]"
    contents = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e["choices"]]
    assert len([c for c in contents if c]) >= 3
    final = events[-2]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["seconds"] == 71


# --- raw HTTP: every field of the response
def check_completion_shape(body: dict, model: str) -> None:
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == model
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "content": choice["message"]["content"],
        "audio": None,
        "tool_calls": None,
        "audio_tokens": [],
    }
    assert isinstance(choice["message"]["content"], str)
    usage = body["usage"]
    assert set(usage) == {
        "completion_tokens", "prompt_tokens", "total_tokens", "completion_tokens_details",
        "prompt_tokens_details", "seconds",
    }  # fmt: skip
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert set(usage["prompt_tokens_details"]) == {"audio_tokens", "cached_tokens"}
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(isinstance(v, int) for k, v in usage.items() if not k.endswith("details"))


def test_usage_accounting(server, speech):
    clip = speech["jfk_inaugural_1961"]  # 11.0 s
    body = post(server, mimo_request(audio_part(clip))).json()
    check_completion_shape(body, "mimo-v2.5-asr")
    usage = body["usage"]
    assert usage["seconds"] == 11
    assert usage["prompt_tokens_details"]["audio_tokens"] == 69  # ceil(11 × 6.25)
    assert usage["prompt_tokens"] == 69  # no text context
    assert 15 <= usage["completion_tokens"] <= 40
    assert "ask not what your country can do for you" in body["choices"][0]["message"]["content"]


def test_openai_form_raw_base64_with_format(server, speech):
    clip = speech["sphinx_goforward"]
    raw = base64.b64encode(clip.bytes()).decode()
    part = {"type": "input_audio", "input_audio": {"data": raw, "format": "wav"}}
    body = post(server, mimo_request(part, model="whisper-tiny.en")).json()
    assert "forward" in body["choices"][0]["message"]["content"].lower()


def test_single_part_content_and_wrong_mime_label(server, speech):
    """A content given as one part (not a list) works, and the bytes decide, not the label."""
    clip = speech["ls_1089-134691-0000"]  # FLAC, labelled as mp3
    body = {
        "model": "whisper-tiny.en",
        "messages": [{"role": "user", "content": audio_part(clip, "audio/mpeg")}],
    }
    text = post(server, body).json()["choices"][0]["message"]["content"]
    assert wer(clip.text, text) <= 0.2


def test_several_audio_parts_are_joined_in_order(server, speech):
    first, second = speech["sphinx_goforward"], speech["ls_1089-134691-0000"]
    body = post(
        server, mimo_request(audio_part(first), audio_part(second), model="whisper-tiny.en")
    )
    body = body.json()
    text = body["choices"][0]["message"]["content"]
    assert wer(f"{first.text} {second.text}", text) <= 0.25
    assert text.lower().index("forward") < text.lower().index("wait")
    assert body["usage"]["seconds"] == 5  # 2.85 s + 2.085 s, rounded up


def test_context_biases_decoding_but_never_appears(server, speech):
    clip = speech["ls_1089-134691-0001"]
    context = "Transcript of an audiobook reading."
    body = post(
        server,
        {
            "model": "whisper-tiny.en",
            "messages": [
                {"role": "system", "content": "You are a speech recogniser."},
                {"role": "user", "content": [{"type": "text", "text": context}, audio_part(clip)]},
            ],
            "asr_options": {"hotwords": ["paced"], "prompt": "A long wait."},
        },
    ).json()
    text = body["choices"][0]["message"]["content"]
    assert "audiobook" not in text.lower() and "recogniser" not in text.lower()
    assert wer(clip.text, text) <= 0.2
    usage = body["usage"]
    assert usage["prompt_tokens"] > usage["prompt_tokens_details"]["audio_tokens"]


def test_tolerated_fields_are_ignored(server, speech):
    body = post(
        server,
        mimo_request(
            audio_part(speech["sphinx_goforward"]),
            model="whisper-tiny.en",
            max_tokens=5,
            max_completion_tokens=5,
            temperature=0.0,
            thinking={"type": "disabled"},
            user="u1",
            n=1,
            some_future_field=True,
        ),
    )
    assert body.status_code == 200
    assert "forward" in body.json()["choices"][0]["message"]["content"].lower()


# --- languages
@pytest.mark.parametrize("language", ["zh", "auto"])
def test_mandarin_comes_back_in_chinese_characters(server, speech, language):
    clip = speech["aishell1_BAC009S0724W0121"]
    body = post(server, mimo_request(audio_part(clip), asr_options={"language": language})).json()
    text = body["choices"][0]["message"]["content"]
    assert len(CJK.findall(text)) >= 0.6 * len(re.sub(r"\W", "", text)) > 0


def test_german_with_auto_stays_german(server, speech):
    clip = speech["picovoice_test_de"]
    body = post(server, mimo_request(audio_part(clip), asr_options={"language": "auto"})).json()
    text = body["choices"][0]["message"]["content"]
    assert wer(clip.text, text) <= 0.5, text
    german = {"der", "die", "das", "und", "ist", "nicht", "ich", "ein", "eine", "zu", "mit"}
    assert german & set(re.findall(r"\w+", text.lower())), text


def test_english_word_error_rate_of_the_base_model(server, speech):
    """Whisper base is ≈ 5% WER on LibriSpeech test-clean; the clean English clips stay near it."""
    ids = [
        "ls_1089-134686-0000", "ls_1089-134686-0001", "ls_1089-134691-0000",
        "ls_1089-134691-0001", "ls_1988-24833-0001", "ls_2412-153948-0000",
        "ls_3752-4944-0000", "ls_1272-128104-0000", "jfk_inaugural_1961",
    ]  # fmt: skip
    import jiwer

    from tests.conftest import normalize_text

    refs, hyps = [], []
    for clip_id in ids:
        clip = speech[clip_id]
        body = post(server, mimo_request(audio_part(clip), asr_options={"language": "en"})).json()
        refs.append(normalize_text(clip.text))
        hyps.append(normalize_text(body["choices"][0]["message"]["content"]))
    corpus_wer = jiwer.wer(refs, hyps)
    assert corpus_wer <= 0.10, (corpus_wer, list(zip(refs, hyps, strict=True)))


# --- errors: every bad input gets the right status and body, and the server keeps serving
BAD_REQUESTS = [
    pytest.param(b"{not json", 400, "invalid_json", None, id="bad-json"),
    pytest.param(b"[1, 2]", 400, "invalid_json", None, id="not-an-object"),
    pytest.param({"model": "mimo-v2.5-asr"}, 400, None, "messages", id="missing-messages"),
    pytest.param({"model": "mimo-v2.5-asr", "messages": []}, 400, None, "messages", id="no-msgs"),
    pytest.param(
        mimo_request({"type": "text", "text": "hello"}), 400, None, "messages", id="no-audio-part"
    ),
    pytest.param(
        mimo_request({"type": "input_audio", "input_audio": {"data": "data:audio/wav;base64,@@@"}}),
        400,
        "invalid_audio",
        "messages.0.content.0.input_audio.data",
        id="bad-base64",
    ),
    pytest.param(
        mimo_request(
            {
                "type": "input_audio",
                "input_audio": {
                    "data": "data:text/plain;base64,"
                    + base64.b64encode(b"hello, this is not audio at all").decode()
                },
            }
        ),
        400,
        "invalid_audio",
        "messages.0.content.0.input_audio.data",
        id="data-url-not-audio",
    ),
    pytest.param(
        mimo_request(
            {
                "type": "input_audio",
                "input_audio": {
                    "data": "data:audio/wav;base64,"
                    + base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt garbage").decode()
                },
            }
        ),
        400,
        "invalid_audio",
        None,
        id="corrupt-wav",
    ),
    pytest.param(
        mimo_request({"type": "input_audio", "input_audio": {"data": "data:audio/wav;base64,"}}),
        400,
        "invalid_audio",
        None,
        id="empty-audio",
    ),
    pytest.param(
        mimo_request({"type": "input_audio", "input_audio": {"data": "https://x.test/a.wav"}}),
        400,
        "invalid_audio",
        None,
        id="url-not-fetched",
    ),
    pytest.param(
        mimo_request({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}),
        400,
        None,
        None,
        id="unsupported-part",
    ),
]


@pytest.mark.parametrize(("payload", "status", "code", "param"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_400(server, speech, assert_error, payload, status, code, param):
    url = f"{server.url}/v1/chat/completions"
    if isinstance(payload, bytes):
        response = httpx.post(url, content=payload, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json=payload)
    error = assert_error(response, status, code, param)
    assert error["type"] == "invalid_request_error"
    assert "loc" not in response.text and "detail" not in response.json()
    # ... and the server still serves a good request.
    good = post(
        server, mimo_request(audio_part(speech["sphinx_goforward"]), model="whisper-tiny.en")
    )
    assert good.status_code == 200


def test_unknown_model_is_404(server, speech, assert_error):
    response = post(server, mimo_request(audio_part(speech["sphinx_goforward"]), model="gpt-9"))
    assert_error(response, 404, "model_not_found", "model")


def test_unknown_language_is_named(server, speech, assert_error):
    clip = speech["sphinx_goforward"]
    response = post(server, mimo_request(audio_part(clip), asr_options={"language": "klingon"}))
    error = assert_error(response, 400, "unsupported_language", "asr_options.language")
    assert "klingon" in error["message"]


def test_english_only_model_refuses_other_languages(server, speech, assert_error):
    clip = speech["picovoice_test_de"]
    response = post(
        server,
        mimo_request(audio_part(clip), model="whisper-tiny.en", asr_options={"language": "de"}),
    )
    assert_error(response, 400, "unsupported_language", "asr_options.language")


def test_n_other_than_one_is_refused(server, speech, assert_error):
    response = post(server, mimo_request(audio_part(speech["sphinx_goforward"]), n=2))
    assert_error(response, 400, param="n")


def test_payload_over_the_limit_is_413_before_decoding(harken_home, speech, assert_error):
    from tests.conftest import run_server

    with run_server(
        harken_home, max_payload_mb=0.05, default_model="whisper-tiny.en", preload=[]
    ) as small:
        clip = speech["jfk_inaugural_1961"]  # 352 kB of WAV, far over 50 kB
        response = post(small, mimo_request(audio_part(clip), model="whisper-tiny.en"))
        assert_error(response, 413, "file_too_large")
        small_clip = speech["sphinx_cards_001"]
        assert len(small_clip.data_url()) < 0.05 * 1048576
        assert post(small, mimo_request(audio_part(small_clip), model="whisper-tiny.en")).is_success


def test_audio_over_the_duration_cap_is_413(harken_home, speech, assert_error):
    from tests.conftest import run_server

    with run_server(
        harken_home, max_audio_seconds=5, default_model="whisper-tiny.en", preload=[]
    ) as short:
        response = post(short, mimo_request(audio_part(speech["jfk_inaugural_1961"])))
        assert_error(response, 413, "audio_too_long")


# --- keys
def test_both_key_headers_and_wrong_keys(keyed_server, speech, assert_error):
    body = mimo_request(audio_part(speech["sphinx_goforward"]))
    url = keyed_server.url
    assert post(keyed_server, body, headers={"api-key": "sk-test-one"}).status_code == 200
    ok = post(keyed_server, body, headers={"Authorization": "Bearer sk-test-two"})
    assert ok.status_code == 200
    for headers in ({}, {"api-key": "sk-test"}, {"api-key": ""}, {"Authorization": "sk-test-one"},
                    {"Authorization": "Bearer sk-test-one-more"}):  # fmt: skip
        response = post(keyed_server, body, headers=headers)
        error = assert_error(response, 401, "invalid_api_key")
        assert error["type"] == "authentication_error"
        assert "sk-test" not in response.text
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200
