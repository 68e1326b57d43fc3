"""What an OpenAI audio-API client can do: CONTRACT.md §2, through the real `openai` SDK and raw
HTTP, on real speech with the real models.

Every response format, streaming, translations, the same text as the chat endpoint, and every
error in the contract's body. English cases use whisper-tiny.en (fast); language detection and
translation use whisper-base.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from harken.audio import SAMPLE_RATE, decode_audio
from harken.engine import Transcription
from tests.conftest import cer, normalize_text, run_server, sse_payloads, wav_bytes, wer

ENGLISH = "jfk_inaugural_1961"  # 11 s, two segments with tiny.en
TINY = "whisper-tiny.en"


def post(server: Any, route: str = "transcriptions", *, clip: Any = None, **kwargs: Any):
    files = kwargs.pop("files", None)
    if clip is not None:
        files = {"file": (clip.path.name, clip.bytes())}
    return httpx.post(f"{server.url}/v1/audio/{route}", files=files, timeout=600, **kwargs)


def looks_english(text: str) -> bool:
    words = set(normalize_text(text).split())
    foreign = {"der", "die", "das", "und", "wurde", "als", "las", "son", "muy", "tiene", "y"}
    return bool(words & {"the", "was", "is", "are", "of", "and", "a"}) and not words & foreign


@pytest.fixture(scope="module")
def english_json(openai_client, speech):
    """The default (json) response for the English clip; the other formats must agree with it."""
    raw = openai_client.audio.transcriptions.with_raw_response.create(
        file=speech[ENGLISH].path, model=TINY
    )
    return raw.headers, raw.parse()


# --- every response format through the SDK
def test_json_is_text_and_duration_usage(english_json, speech):
    headers, result = english_json
    assert headers["content-type"] == "application/json"
    assert wer(speech[ENGLISH].text, result.text) <= 0.2
    assert result.usage.type == "duration" and result.usage.seconds == 11


def test_text_is_the_bare_transcript_not_json(openai_client, speech, english_json):
    raw = openai_client.audio.transcriptions.with_raw_response.create(
        file=speech[ENGLISH].path, model=TINY, response_format="text"
    )
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.parse() == english_json[1].text


def test_srt_parses_and_its_cues_cover_the_audio(openai_client, speech, english_json):
    clip = speech[ENGLISH]
    raw = openai_client.audio.transcriptions.with_raw_response.create(
        file=clip.path, model=TINY, response_format="srt"
    )
    assert raw.headers["content-type"].split(";")[0] == "application/x-subrip"
    cues = list(srt.parse(raw.parse(), ignore_errors=False))
    assert len(cues) >= 2
    assert [c.index for c in cues] == list(range(1, len(cues) + 1))
    for before, after in itertools.pairwise(cues):
        assert before.start <= after.start and before.end <= after.end
    assert all(c.start < c.end for c in cues)
    assert cues[0].start.total_seconds() < 1.0
    assert clip.duration - 1.5 <= cues[-1].end.total_seconds() <= clip.duration
    assert " ".join(c.content for c in cues) == english_json[1].text


def test_vtt_parses_and_its_cues_cover_the_audio(openai_client, speech, english_json):
    clip = speech[ENGLISH]
    raw = openai_client.audio.transcriptions.with_raw_response.create(
        file=clip.path, model=TINY, response_format="vtt"
    )
    assert raw.headers["content-type"].split(";")[0] == "text/vtt"
    body = raw.parse()
    assert body.startswith("WEBVTT\n")
    captions = webvtt.from_string(body).captions
    assert len(captions) >= 2
    starts = [c.start_in_seconds for c in captions]
    assert starts == sorted(starts)
    assert all(c.start_in_seconds < c.end_in_seconds for c in captions)
    assert starts[0] < 1.0
    assert clip.duration - 1.5 <= captions[-1].end_in_seconds <= clip.duration
    assert " ".join(c.text for c in captions) == english_json[1].text


def test_verbose_json_with_word_timestamps(openai_client, speech, english_json):
    clip = speech[ENGLISH]
    result = openai_client.audio.transcriptions.create(
        file=clip.path,
        model=TINY,
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.language == "english"
    assert result.duration == pytest.approx(clip.duration, abs=0.01)
    assert result.text == english_json[1].text
    assert result.usage.seconds == 11
    extra = result.model_extra or {}
    assert extra.get("task") == "transcribe"
    segments = result.segments
    assert [s.id for s in segments] == list(range(len(segments)))
    assert "".join(s.text for s in segments).strip() == result.text
    for s in segments:
        assert 0 <= s.start <= s.end <= clip.duration
        assert s.tokens and s.avg_logprob < 0 and 0 <= s.no_speech_prob <= 1
    words = result.words
    assert normalize_text(" ".join(w.word for w in words)) == normalize_text(result.text)
    previous_end = 0.0
    for w in words:
        assert previous_end <= w.start <= w.end, w
        assert any(s.start <= w.start and w.end <= s.end for s in segments), w
        previous_end = w.end


# --- streaming
def test_sdk_stream_deltas_join_to_the_done_text(openai_client, speech, english_json):
    events = list(
        openai_client.audio.transcriptions.create(
            file=speech[ENGLISH].path, model=TINY, stream=True
        )
    )
    *deltas, done = events
    assert len(deltas) >= 2, "one delta per recognised segment"
    assert all(e.type == "transcript.text.delta" for e in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == done.text == english_json[1].text
    assert done.usage.type == "duration" and done.usage.seconds == 11


def test_a_verbose_json_stream_carries_the_segments_language_and_duration(openai_client, speech):
    """One pass gives what verbose_json gives: each segment's times follow its delta (OpenAI's
    `transcript.text.segment`), and the done event says the language and duration."""
    clip = speech[ENGLISH]
    whole = openai_client.audio.transcriptions.create(
        file=clip.path, model=TINY, response_format="verbose_json",
        timestamp_granularities=["segment"],
    )  # fmt: skip
    events = list(
        openai_client.audio.transcriptions.create(
            file=clip.path, model=TINY, response_format="verbose_json", stream=True
        )
    )
    *body, done = events
    assert [e.type for e in body] == ["transcript.text.delta", "transcript.text.segment"] * len(
        whole.segments
    )
    segments = body[1::2]
    assert [(s.start, s.end, s.text) for s in segments] == [
        (round(s.start, 3), round(s.end, 3), s.text.strip()) for s in whole.segments
    ]
    assert [s.id for s in segments] == [f"seg_{i}" for i in range(len(segments))]
    assert "".join(e.delta for e in body[0::2]) == done.text == whole.text
    assert (done.language, done.duration) == (whole.language, whole.duration) == ("english", 11.0)
    assert done.usage.seconds == 11


def test_a_verbose_json_translation_stream_says_english(server, speech):
    response = post(
        server,
        "translations",
        clip=speech["picovoice_test_es"],
        data={"model": "whisper-base", "stream": "true", "response_format": "verbose_json"},
    )
    assert response.status_code == 200, response.text
    *events, done, end = sse_payloads(response.text)
    assert end == "[DONE]" and done["language"] == "english" and done["duration"] > 8
    segments = [e for e in events if e["type"] == "transcript.text.segment"]
    assert segments and all(0 <= e["start"] <= e["end"] <= done["duration"] for e in segments)
    assert " ".join(e["text"] for e in segments) == done["text"]
    assert looks_english(done["text"]), done


def test_an_engine_failure_mid_stream_is_an_error_event(server, speech, monkeypatch):
    """The clip twice, 20 s apart (so read as two pieces); the model fails on the second."""
    loaded = server.service._models[TINY]
    monkeypatch.setattr(loaded, "transcriber", FailsAfterFirstPiece(loaded.transcriber))
    clip = decode_audio(speech[ENGLISH].bytes())
    twice = np.concatenate([clip, np.zeros(20 * SAMPLE_RATE, dtype=np.float32), clip])
    response = post(server, files={"file": ("twice.wav", wav_bytes(twice))},
                    data={"model": TINY, "stream": "true"})  # fmt: skip
    assert response.status_code == 200  # the stream had started
    *deltas, error = sse_payloads(response.text)
    assert deltas and all(e["type"] == "transcript.text.delta" and e["delta"] for e in deltas)
    assert error["error"]["type"] == "server_error" and "Traceback" not in response.text


class FailsAfterFirstPiece:
    """The real model, made to fail once it has read one piece of a recording: no real input
    makes the engine fail half-way on purpose, and this is the path a client must see handled."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def transcribe(self, audio: Any, options: Any) -> Transcription:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("the engine fell over")
        return self.real.transcribe(audio, options)


# --- one engine behind both dialects
def test_chat_completions_and_audio_api_agree(server, speech, english_json):
    clip = speech[ENGLISH]
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": TINY,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": clip.data_url()}}],
                }
            ],
        },
        timeout=600,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == english_json[1].text


# --- other languages: detected, kept, and translated
def test_german_without_language_stays_german(openai_client, speech):
    clip = speech["picovoice_test_de"]
    result = openai_client.audio.transcriptions.create(
        file=clip.path, model="whisper-base", response_format="verbose_json"
    )
    assert result.language == "german"
    assert cer(clip.text, result.text) <= 0.25
    assert result.words is None  # only when asked for


def test_german_translates_to_english(openai_client, speech):
    result = openai_client.audio.translations.create(
        file=speech["picovoice_test_de"].path, model="whisper-base", response_format="verbose_json"
    )
    assert result.language == "english"
    assert (result.model_extra or {}).get("task") == "translate"
    assert looks_english(result.text), result.text
    assert result.segments and result.segments[-1].end <= speech["picovoice_test_de"].duration


def test_spanish_streams_in_spanish(openai_client, speech):
    clip = speech["picovoice_test_es"]
    events = list(
        openai_client.audio.transcriptions.create(file=clip.path, model="whisper-base", stream=True)
    )
    done = events[-1]
    assert "".join(e.delta for e in events[:-1]) == done.text
    assert cer(clip.text, done.text) <= 0.3
    assert not looks_english(done.text)


def test_spanish_translation_streams_english(server, speech):
    response = post(
        server,
        "translations",
        clip=speech["picovoice_test_es"],
        data={"model": "whisper-1", "stream": "true", "response_format": "text"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_payloads(response.text)
    assert events[-1] == "[DONE]"
    *deltas, done = events[:-1]
    assert all(e["type"] == "transcript.text.delta" for e in deltas)
    assert done["type"] == "transcript.text.done"
    assert "".join(e["delta"] for e in deltas) == done["text"]
    assert done["usage"] == {"type": "duration", "seconds": 9}
    assert looks_english(done["text"]), done


# --- errors: the contract's body and status, and the server keeps serving
CORRUPT = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4


@pytest.mark.parametrize(
    ("route", "fields", "upload", "status", "code", "param"),
    [
        ("transcriptions", {"model": TINY}, None, 400, None, "file"),
        ("translations", {}, None, 400, None, "file"),
        ("transcriptions", {"response_format": "xml"}, "ok", 400, None, "response_format"),
        (
            "transcriptions",
            {"response_format": "json", "timestamp_granularities[]": "word"},
            "ok", 400, None, "timestamp_granularities[]",
        ),
        (
            "transcriptions", {"timestamp_granularities[]": "sentence"}, "ok",
            400, None, "timestamp_granularities[]",
        ),
        ("transcriptions", {"response_format": "srt", "stream": "true"}, "ok", 400, None, "stream"),
        ("transcriptions", {"model": "whisper-huge"}, "ok", 404, "model_not_found", "model"),
        ("translations", {"model": "nope"}, "ok", 404, "model_not_found", "model"),
        ("transcriptions", {"language": "klingon"}, "ok", 400, "unsupported_language", "language"),
        (
            "transcriptions", {"model": TINY, "language": "de"}, "ok",
            400, "unsupported_language", "language",
        ),
        ("translations", {"model": TINY}, "ok", 400, None, "model"),
        ("transcriptions", {"temperature": "3"}, "ok", 400, None, "temperature"),
        ("transcriptions", {"stream": "maybe"}, "ok", 400, None, "stream"),
        ("transcriptions", {"model": TINY}, "corrupt", 400, "invalid_audio", "file"),
        ("transcriptions", {"model": TINY}, "text", 400, "invalid_audio", "file"),
        ("translations", {}, "empty", 400, "invalid_audio", "file"),
    ],
)  # fmt: skip
def test_bad_requests_get_the_contract_error(
    server, speech, assert_error, route, fields, upload, status, code, param
):
    uploads = {
        None: None,
        "ok": speech["sphinx_cards_001"].bytes(),
        "corrupt": CORRUPT,
        "text": b"this is not audio at all\n" * 40,
        "empty": b"",
    }
    data = uploads[upload]
    files = None if data is None else {"file": ("clip.wav", data, "audio/wav")}
    error = assert_error(post(server, route, files=files, data=fields), status, code, param)
    assert error["type"] == "invalid_request_error"


def test_a_json_body_instead_of_a_form_is_a_400(server, assert_error):
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions", json={"file": "x", "model": TINY}, timeout=60
    )
    assert_error(response, 400, param="file")


def test_sdk_raises_the_contracts_errors(openai_client, speech):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.audio.transcriptions.create(file=speech["sphinx_cards_001"].path, model="x")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.audio.translations.create(file=speech["sphinx_cards_001"].path, model=TINY)
    assert "English-only" in caught.value.message


def test_after_all_those_errors_the_server_still_transcribes(openai_client, speech):
    clip = speech["ls_1089-134691-0000"]  # "He could wait no longer."
    text = openai_client.audio.transcriptions.create(
        file=clip.path,
        model=TINY,
        response_format="text",
        prompt="Chapter one.",
        extra_body={"hotwords": "longer"},
    )
    assert wer(clip.text, text) <= 0.2
    assert "chapter" not in text.lower()  # a prompt biases decoding, it is never output


def test_uploads_over_the_limit_are_413(harken_home, speech, assert_error):
    with run_server(
        harken_home, max_upload_mb=0.05, default_model=TINY, preload=[TINY]
    ) as small:  # 52 KB
        # Over the file limit but inside the framing slack: refused by the route, naming `file`.
        mid = speech["ls_1089-134691-0001"]  # 94 KB
        assert_error(post(small, clip=mid), 413, "file_too_large", "file")
        # Far over: refused by the body limit before the form is parsed.
        big = speech[ENGLISH]  # 352 KB
        assert_error(post(small, clip=big), 413, "file_too_large")
        # Still serving; form fields left blank (as HTML forms send them) mean "not set".
        blank = {"response_format": "text", "temperature": "", "language": "", "stream": ""}
        blank["timestamp_granularities[]"] = ""
        ok = post(small, clip=speech["ls_1089-134691-0000"], data=blank)
        assert ok.status_code == 200 and wer(speech["ls_1089-134691-0000"].text, ok.text) <= 0.2


def test_keys_are_required_when_configured(keyed_server, speech, assert_error):
    clip = speech["sphinx_cards_001"]
    assert_error(post(keyed_server, clip=clip), 401, "invalid_api_key")
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="sk-test-two", max_retries=0)
    result = client.audio.transcriptions.create(file=clip.path, model="mimo-v2.5-asr")
    assert result.text
