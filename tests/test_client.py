"""harken.Client and harken.AsyncClient against the real server: both dialects, streaming."""

from __future__ import annotations

import asyncio

import pytest
import srt

import harken
from harken.client import HarkenAPIError, audio_data_url, mimo_openai_kwargs, mimo_request
from tests.conftest import wer

TINY = "whisper-tiny.en"


@pytest.fixture(scope="module")
def client(server):
    with harken.Client(server.url) as c:
        yield c


def test_data_url_and_request_body(speech):
    clip = speech["ls_1089-134691-0000"]
    assert audio_data_url(clip.path) == clip.data_url("audio/flac")
    # Bytes without a name: the type is sniffed from the bytes.
    assert audio_data_url(speech["sphinx_cards_001"].bytes()).startswith("data:audio/wav;base64,")
    body = mimo_request([clip.path, clip.bytes()], language="en", hotwords=["Quilter"],
                        context="A novel.")  # fmt: skip
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "input_audio", "input_audio"]
    assert body["asr_options"] == {"language": "en", "hotwords": ["Quilter"]}
    assert body["model"] == "mimo-v2.5-asr" and body["stream"] is False


def test_mimo_chat(client, speech):
    clip = speech["ls_2412-153948-0002"]
    result = client.mimo_transcribe(clip.path, model=TINY, language="en")
    assert wer(clip.text, result.text) < 0.15, result.text
    assert result.usage["seconds"] == 4
    assert result.raw["object"] == "chat.completion"


def test_mimo_chat_stream_joins_to_the_full_text(client, speech):
    clip = speech["ls_1089-134691-0001"]
    full = client.mimo_transcribe(clip.path, model=TINY, language="en").text
    with client.mimo_transcribe_stream(clip.path, model=TINY, language="en") as stream:
        deltas = list(stream)
    assert deltas and "".join(deltas) == stream.text == full
    assert stream.usage["seconds"] == 6


def test_openai_audio_formats(client, speech):
    clip = speech["ls_1089-134691-0000"]
    as_json = client.transcribe(clip.path, model=TINY)
    assert wer(clip.text, as_json.text) < 0.3 and as_json.usage["seconds"] == 3
    subtitles = client.transcribe(clip.bytes(), model=TINY, response_format="srt")
    cues = list(srt.parse(subtitles.text))
    assert cues[0].index == 1 and wer(clip.text, cues[0].content) < 0.3
    with clip.path.open("rb") as file:
        verbose = client.transcribe(
            file, model=TINY, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert verbose.raw["words"] and verbose.raw["segments"]
    assert verbose.language == "english" and verbose.duration == pytest.approx(
        clip.duration, abs=0.05
    )
    assert verbose.words == verbose.raw["words"] and verbose.segments == verbose.raw["segments"]


def test_openai_audio_stream(client, speech):
    clip = speech["ls_2412-153948-0002"]
    stream = client.transcribe_stream(clip.path, model=TINY, language="en")
    deltas = list(stream)
    assert "".join(deltas) == stream.text and wer(clip.text, stream.text) < 0.15
    assert stream.usage == {"type": "duration", "seconds": 4}


def test_async_client_runs_requests_concurrently(server, speech):
    short, other = speech["sphinx_cards_001"], speech["ls_1089-134691-0000"]

    async def main():
        async with harken.AsyncClient(f"{server.url}/v1") as client:
            models = await client.models()
            chat, stream = await asyncio.gather(
                client.mimo_transcribe(short.path, model=TINY, language="en"),
                client.transcribe_stream(other.path, model=TINY),
            )
            deltas = [delta async for delta in stream]
            mimo_stream = await client.mimo_transcribe_stream(short.path, model=TINY)
            mimo_deltas = [delta async for delta in mimo_stream]
            return models, chat, deltas, stream.text, mimo_deltas, mimo_stream.text

    models, chat, deltas, text, mimo_deltas, mimo_text = asyncio.run(main())
    assert "mimo-v2.5-asr" in models
    assert wer(short.text, chat.text) < 0.5, chat.text
    assert "".join(deltas) == text and wer(other.text, text) < 0.3
    assert "".join(mimo_deltas) == mimo_text and wer(short.text, mimo_text) < 0.5


def test_errors_carry_the_contract_fields(client, keyed_server, speech):
    clip = speech["sphinx_cards_001"]
    with pytest.raises(HarkenAPIError) as caught:
        client.mimo_transcribe(clip.path, model="whisper-huge")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    with pytest.raises(HarkenAPIError) as caught:
        client.transcribe_stream(clip.path, model=TINY, language="xx")
    assert caught.value.status == 400 and caught.value.code == "unsupported_language"

    with pytest.raises(HarkenAPIError) as caught, harken.Client(keyed_server.url) as anonymous:
        anonymous.models()
    assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    with harken.Client(keyed_server.url, api_key="sk-test-one") as keyed:
        assert "whisper-tiny.en" in keyed.models()
        assert keyed.mimo_transcribe(clip.path).text


def test_openai_sdk_with_the_mimo_helper(openai_client, speech):
    """Where the openai SDK fits, use it: the client only builds MiMo's data URL and options."""
    clip = speech["ls_2412-153948-0002"]
    reply = openai_client.chat.completions.create(
        **mimo_openai_kwargs(clip.path, model=TINY, language="en")
    )
    assert wer(clip.text, reply.choices[0].message.content) < 0.15
