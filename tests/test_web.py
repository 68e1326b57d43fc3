"""The web page at `/`, in a real headless Chromium (Debian's package driven by Playwright)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import srt
import webvtt

from harken.engine.types import Segment
from harken.formats import render_srt
from tests.conftest import SPEECH_DIR, wer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]  # fmt: skip
SCREENSHOT = Path("/tmp/harken-web.png")
# The "microphone": Chromium's fake capture device plays a real recording (16-bit PCM WAV), once.
MICROPHONE_CLIP = "librivox_sns01_0880"
LIVE_CLIP = "jfk_inaugural_1961"  # 11 s with pauses: long enough for text while speaking


def fake_microphone(clip: str) -> list[str]:
    wav = SPEECH_DIR / "audio" / f"{clip}.wav"
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop"]  # fmt: skip


def ensure_chromium() -> None:
    """Install Debian's chromium on a fresh machine (`make test` does the same); never the
    browser download of `playwright install`, which needs the network."""
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(install, capture_output=True)
    if not CHROMIUM.exists():
        pytest.fail("the web tests need Debian's chromium: run `make test` or "
                    "`apt-get install -y chromium`")  # fmt: skip


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@contextmanager
def chromium(playwright: Any, microphone: str) -> Iterator[Any]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS + fake_microphone(microphone)
    )
    try:
        yield browser
    finally:
        browser.close()


@contextmanager
def new_page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors  # no uncaught JavaScript error on any page


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    with chromium(playwright, MICROPHONE_CLIP) as browser:
        yield browser


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with new_page(browser) as page:
        yield page


def test_the_page_needs_no_key_but_the_api_does(keyed_server):
    page = httpx.get(f"{keyed_server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<label for="file">' in page.text and '<script src="/web/app.js"' in page.text
    script = httpx.get(f"{keyed_server.url}/web/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert (
        httpx.get(f"{keyed_server.url}/web/style.css")
        .headers["content-type"]
        .startswith("text/css")
    )
    worklet = httpx.get(f"{keyed_server.url}/web/pcm16-worklet.js")
    assert worklet.status_code == 200 and "javascript" in worklet.headers["content-type"]
    assert httpx.get(f"{keyed_server.url}/web/index.html").status_code == 404  # only at /
    assert httpx.get(f"{keyed_server.url}/web/..%2Fconfig.py").status_code == 404
    assert httpx.get(f"{keyed_server.url}/v1/models").status_code == 401


def test_upload_see_the_transcript_arrive_and_download_subtitles(server, speech, page):
    from playwright.sync_api import expect

    clip = speech["jfk_inaugural_1961"]  # two segments with tiny.en: two deltas
    page.goto(server.url)
    expect(page.locator("#model option")).not_to_have_count(0)
    models = page.locator("#model option").all_inner_texts()
    assert {"whisper-base", "whisper-tiny.en", "mimo-v2.5-asr"} <= set(models)
    assert page.locator("#transcribe").is_disabled()  # nothing chosen yet

    page.get_by_label("Model").select_option("whisper-tiny.en")
    page.get_by_label("Language").select_option("en")
    page.get_by_label("Audio or video file").set_input_files(str(clip.path))
    expect(page.locator("#audio-info")).to_contain_text(clip.path.name)
    # Count the text the page appends while the stream is still open, and the progress shown.
    page.evaluate(
        """() => {
            window.deltaNodes = 0;
            new MutationObserver((changes) => {
                for (const c of changes) window.deltaNodes += [...c.addedNodes]
                    .filter((n) => n.nodeType === Node.TEXT_NODE).length;
            }).observe(document.getElementById("transcript"), {childList: true});
            // Every value the bar held: each change's old value (changes come in batches).
            window.progress = [];
            new MutationObserver((changes) => {
                for (const c of changes) window.progress.push(Number(c.oldValue));
            }).observe(document.getElementById("progress"),
                       {attributes: true, attributeFilter: ["value"], attributeOldValue: true});
        }"""
    )
    audio_requests: list[str] = []
    page.on(
        "request",
        lambda r: audio_requests.append(r.url) if "/v1/audio/" in r.url else None,
    )
    page.get_by_role("button", name="Transcribe").click()
    expect(page.locator("#status")).to_have_text(re.compile(r"^Done in"), timeout=300_000)
    text = page.locator("#transcript").inner_text()
    assert wer(clip.text, text) < 0.25, text
    # Progress went through the audio: part-way after the first segment, then the whole.
    progress = page.evaluate("[...window.progress, document.getElementById('progress').value]")
    assert any(0 < value < 1 for value in progress) and progress[-1] == 1, progress
    assert progress == sorted(progress), progress
    expect(page.locator("#progress-text")).to_have_text("0:11 of 0:11")
    expect(page.locator("#language-info")).to_have_text("Language (chosen): english")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download SRT").click()
    download = download_info.value
    assert download.suggested_filename == "jfk_inaugural_1961.srt"
    cues = list(srt.parse(Path(download.path()).read_text()))
    assert cues[0].index == 1 and cues[-1].end.total_seconds() <= clip.duration + 0.5
    assert wer(clip.text, " ".join(c.content for c in cues)) < 0.25
    # One delta per segment at least: the text arrived in pieces, not all at the end.
    assert page.evaluate("window.deltaNodes") >= len(cues) >= 2

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download VTT").click()
    vtt_path = download_info.value.path()
    captions = webvtt.read(str(vtt_path)).captions
    assert [c.text for c in captions] == [c.content for c in cues]
    expect(page.locator("#status")).to_have_text("Downloaded jfk_inaugural_1961.vtt.")
    # The subtitles came from the one streamed pass, and equal the server's own SRT.
    assert audio_requests == [f"{server.url}/v1/audio/transcriptions"]
    server_srt = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": (clip.path.name, clip.bytes())},
        data={"model": "whisper-tiny.en", "language": "en", "response_format": "srt"},
        timeout=300,
    ).text
    assert Path(download.path()).read_text() == server_srt

    # The segments with their times; choosing one plays the recording from its start.
    segments = page.locator("#segments button")
    assert segments.count() == len(cues)
    for segment, cue in zip(segments.all(), cues, strict=True):
        start = cue.start.total_seconds()
        assert segment.get_attribute("data-start") is not None
        assert abs(float(segment.get_attribute("data-start") or "") - start) < 0.001
        assert cue.content in segment.inner_text()
    last = cues[-1].start.total_seconds()
    segments.last.click()
    page.wait_for_function("() => !document.getElementById('preview').paused")
    position = page.evaluate("document.getElementById('preview').currentTime")
    assert last - 0.001 <= position < clip.duration, position  # media time is not exact
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Times a long recording can give (a cue running past the next one's start, one going
    # backwards): the page's subtitles follow the server's rules for them too.
    odd = [(0.0, 3.4, " One."), (3.0, 5.0, " Two."), (4.5, 4.0, " Three."), (6.0, 7.0, " Four.")]
    page_srt = page.evaluate(
        """(odd) => {
            state.segments = odd.map(([start, end, text]) => ({start, end, text}));
            return toSrt();
        }""",
        odd,
    )
    given = [Segment(id=i, seek=0, start=a, end=b, text=t) for i, (a, b, t) in enumerate(odd)]
    assert page_srt == render_srt(given)
    assert [c.end.total_seconds() for c in srt.parse(page_srt)][:2] == [3.0, 4.5]


def test_languages_fit_the_model_and_translate_switches_endpoint(server, speech, page):
    from playwright.sync_api import expect

    clip = speech["picovoice_test_es"]
    page.goto(server.url)
    expect(page.locator("#model option")).not_to_have_count(0)
    translate = page.get_by_label("Translate into English")
    languages = page.locator("#language option")

    # English-only: one language, and nothing to translate.
    page.get_by_label("Model").select_option("whisper-tiny.en")
    assert page.locator("#language option").evaluate_all("os => os.map((o) => o.value)") == ["en"]
    expect(translate).to_be_disabled()
    # Multilingual: detection first, then every language the server says the model knows.
    page.get_by_label("Model").select_option("whisper-base")
    listed = httpx.get(f"{server.url}/v1/models").json()["data"]
    base_languages = next(m["languages"] for m in listed if m["id"] == "whisper-base")
    values = languages.evaluate_all("os => os.map((o) => o.value)")
    assert values[0] == "auto" and sorted(values[1:]) == base_languages
    expect(translate).to_be_enabled()

    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/v1/audio/" in r.url else None)
    translate.check()
    expect(page.get_by_label("Language")).to_be_disabled()  # Whisper detects what it translates
    page.get_by_label("Audio or video file").set_input_files(str(clip.path))
    page.get_by_role("button", name="Translate", exact=True).click()
    expect(page.locator("#status")).to_have_text(re.compile(r"^Done in"), timeout=300_000)
    assert requests == [f"{server.url}/v1/audio/translations"]
    text = page.locator("#transcript").inner_text()
    words = set(text.lower().replace(",", " ").replace(".", " ").split())
    assert len(words) >= 5 and not words & {"el", "los", "que", "y", "de", "la"}, text
    expect(page.locator("#language-info")).to_have_text("Language (translated into): english")
    assert page.locator("#segments button").count() >= 1


def test_record_from_the_microphone(server, speech, page):
    from playwright.sync_api import expect

    clip = speech[MICROPHONE_CLIP]
    page.goto(server.url)
    expect(page.locator("#model option")).not_to_have_count(0)
    page.get_by_label("Model").select_option("whisper-tiny.en")
    record = page.get_by_role("button", name="Record from the microphone")
    record.click()
    stop = page.get_by_role("button", name="Stop recording")
    expect(stop).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout((clip.duration + 1.0) * 1000)
    stop.click()
    expect(page.locator("#audio-info")).to_contain_text(re.compile(r"recording\.(webm|ogg)"))
    expect(record).to_have_attribute("aria-pressed", "false")
    page.get_by_role("button", name="Transcribe").click()
    expect(page.locator("#status")).to_have_text(re.compile(r"^Done in"), timeout=300_000)
    text = page.locator("#transcript").inner_text()
    # MediaRecorder's webm/opus, decoded by the server: the recording's words come back.
    assert wer(clip.text, text) <= 0.5, text


def test_asks_for_a_key_when_the_server_has_one(keyed_server, page):
    from playwright.sync_api import expect

    page.goto(keyed_server.url)
    key = page.get_by_label("API key")
    expect(key).to_be_visible()
    expect(key).to_be_focused()
    key.fill("sk-wrong")
    key.press("Enter")
    expect(page.locator("#key-help")).to_have_text(re.compile("not accepted"))
    key.fill("sk-test-one")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#model option")).not_to_have_count(0)
    assert "whisper-tiny.en" in page.locator("#model option").all_inner_texts()


def test_keyboard_order_and_labels(server, page):
    from playwright.sync_api import expect

    page.goto(server.url)
    expect(page.locator("#model option")).not_to_have_count(0)
    order = []
    for _ in range(5):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert order == ["skip", "file", "record", "model", "language"]
    # Every form control has a visible label, so screen readers announce what it is for.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select")]
            .filter((el) => el.labels.length === 0).map((el) => el.id)"""
    )
    assert unlabelled == []


TRANSCRIPTION = "conversation.item.input_audio_transcription"


def pcm16_wav(pcm: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm)
    return out.getvalue()


def test_live_page_speaks_the_realtime_protocol(server, speech, page):
    """The page's side of Live mode against a scripted socket (Playwright's WebSocket routing):
    the GA session.update it sends, the microphone's audio as PCM16 at 24 kHz (transcribed here
    by the real server, so the conversion is heard, not just counted), dimmed partial text that
    turns final, and a clean close."""
    from playwright.sync_api import expect

    clip = speech[MICROPHONE_CLIP]
    sent: list[dict[str, Any]] = []
    sockets: list[Any] = []

    def on_socket(socket: Any) -> None:
        sockets.append(socket)

        def on_message(message: str | bytes) -> None:
            event = json.loads(message)
            sent.append(event)
            if event["type"] == "session.update":
                socket.send(json.dumps({"type": "session.updated", "session": event["session"]}))

        socket.on_message(on_message)

    page.route_web_socket(re.compile(r".*/v1/realtime\?intent=transcription$"), on_socket)
    page.goto(server.url)
    expect(page.locator("#model option")).not_to_have_count(0)
    page.get_by_label("Model").select_option("whisper-tiny.en")
    start = page.get_by_role("button", name="Start live transcription")
    start.click()
    expect(page.locator("#live-status")).to_have_text("Listening… speak now.")
    update = sent[0]
    assert update["type"] == "session.update"
    assert update["session"] == {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "whisper-tiny.en", "language": "en"},
                "turn_detection": {"type": "server_vad"},
            }
        },
    }

    def audio() -> bytes:
        appends = [e for e in sent if e["type"] == "input_audio_buffer.append"]
        return b"".join(base64.b64decode(e["audio"]) for e in appends)

    # The clip plays once, then the fake microphone is silent: wait for all of it.
    deadline = time.monotonic() + clip.duration + 10
    while len(audio()) < (clip.duration + 1.0) * 24000 * 2 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    pcm = audio()
    assert all(len(base64.b64decode(e["audio"])) == 4800 for e in sent[1:]), "100 ms chunks"
    heard = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": ("live.wav", pcm16_wav(pcm, 24000))},
        data={"model": "whisper-tiny.en", "language": "en"},
        timeout=300,
    ).json()["text"]
    assert wer(clip.text, heard) <= 0.5, heard

    # The server's side, scripted: speech, two deltas, the final text.
    def send(kind: str, **fields: Any) -> None:
        sockets[0].send(json.dumps({"type": kind, **fields}))

    item = {"item_id": "item_1"}
    send("input_audio_buffer.speech_started", audio_start_ms=120, **item)
    for delta in ("he was", " not an"):
        send(f"{TRANSCRIPTION}.delta", content_index=0, delta=delta, **item)
    partial = page.locator("#live-transcript .utterance.partial")
    expect(partial).to_have_text("he was not an")
    muted = page.evaluate("getComputedStyle(document.querySelector('.partial')).color")
    normal = page.evaluate("getComputedStyle(document.getElementById('live-transcript')).color")
    assert muted != normal  # shown dimmed
    send("input_audio_buffer.speech_stopped", audio_end_ms=2900, **item)
    final_text = "He was not an ill-disposed young man."
    usage = {"type": "duration", "seconds": 3}
    send(f"{TRANSCRIPTION}.completed", content_index=0, transcript=final_text, usage=usage, **item)
    final = page.locator("#live-transcript .utterance.final")
    expect(final).to_have_text(final_text)
    expect(partial).to_have_count(0)
    # A bad event's error is shown; the session goes on.
    error = {"message": "Unknown event type 'x'.", "type": "invalid_request_error",
             "code": "unknown_event", "param": "type", "event_id": "evt_1"}  # fmt: skip
    send("error", error=error)
    expect(page.locator("#live-status")).to_have_text("Unknown event type 'x'.")

    page.get_by_role("button", name="Stop live transcription").click()
    expect(page.locator("#live-status")).to_have_text("Stopped.")
    expect(start).to_have_attribute("aria-pressed", "false")
    assert not [e for e in sent if e["type"] == "input_audio_buffer.commit"]  # nothing open


def live_sessions(server: Any) -> tuple[float, float]:
    """From /metrics: live sessions open now, and those the client closed properly."""
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer sk-test-one"}).text
    active = re.search(r"^harken_realtime_sessions_active (\S+)$", text, re.M)
    closed = re.search(
        r'^harken_realtime_sessions_ended_total\{reason="client_closed"\} (\S+)$', text, re.M
    )
    return float(active.group(1)) if active else -1.0, float(closed.group(1)) if closed else 0.0


def test_live_text_from_the_microphone(keyed_server, speech, playwright):
    """The whole path: Chromium's microphone plays a recording, the page streams it to the real
    /v1/realtime (a client secret in the subprotocol, as a browser must), dimmed text appears as the
    words are spoken and turns final; stopping ends the session on the server."""
    from playwright.sync_api import expect

    clip = speech[LIVE_CLIP]
    closed_before = live_sessions(keyed_server)[1]
    with chromium(playwright, LIVE_CLIP) as browser, new_page(browser) as page:
        page.goto(keyed_server.url)
        page.get_by_label("API key").fill("sk-test-two")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#model option")).not_to_have_count(0)
        page.get_by_label("Model").select_option("whisper-tiny.en")
        # Every text an utterance showed, with whether it was still partial.
        page.evaluate(
            """() => {
                window.shown = [];
                const live = document.getElementById("live-transcript");
                new MutationObserver(() => {
                    for (const line of live.querySelectorAll(".utterance")) {
                        window.shown.push([line.dataset.item, line.className, line.textContent]);
                    }
                }).observe(live, {subtree: true, childList: true, characterData: true,
                                  attributes: true});
            }"""
        )
        secrets: list[str] = []
        page.on("request", lambda r: secrets.append(r.url) if "client_secrets" in r.url else None)
        page.get_by_role("button", name="Start live transcription").click()
        expect(page.locator("#live-status")).to_have_text("Listening… speak now.")
        assert secrets == [f"{keyed_server.url}/v1/realtime/client_secrets"]  # not the key
        # The recording plays once; then every utterance it held ends in silence.
        page.wait_for_timeout(clip.duration * 1000)
        page.wait_for_function(
            """() => document.querySelectorAll(".utterance.final").length > 0 &&
                     document.querySelectorAll(".utterance.partial").length === 0""",
            timeout=60_000,
        )
        finals = page.locator(".utterance.final").all_inner_texts()
        # Loose: the live decoder's accuracy is tests/test_realtime.py's to judge; this is
        # that the page shows the recording's words.
        assert wer(clip.text, " ".join(finals)) <= 0.5, finals
        shown = page.evaluate("window.shown")
        partial = {item for item, kind, text in shown if "partial" in kind and text.strip()}
        final = {item for item, kind, _ in shown if "final" in kind}
        assert partial & final, "an utterance showed text while it was spoken, then its final"
        page.get_by_role("button", name="Stop live transcription").click()
        expect(page.locator("#live-status")).to_have_text("Stopped.")
    # The page closed the socket properly (1000), and the server ended the session.
    deadline = time.monotonic() + 10
    while live_sessions(keyed_server) != (0, closed_before + 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_sessions(keyed_server) == (0, closed_before + 1)
