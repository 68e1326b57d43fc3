"""`harken transcribe` and `harken models`: the command line, on real clips with real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import srt
import typer
import webvtt
from typer.testing import CliRunner

import harken
from harken.cli import app
from tests.conftest import free_port, wer

TINY = ["--model", "whisper-tiny.en"]


@pytest.fixture
def run_cli(harken_home):
    """Runs the CLI in this process (the model loads here, no server involved)."""

    def run(*args: str, expect: int = 0):
        result = CliRunner().invoke(app, list(args), env={"HARKEN_HOME": str(harken_home)})
        assert result.exit_code == expect, (result.stdout, result.stderr, result.exception)
        return result

    return run


def message(result) -> str:
    """stderr without the box rich draws around usage errors, on one line."""
    return " ".join(result.stderr.replace("│", " ").split())


def test_one_file_prints_its_text_to_stdout(run_cli, speech):
    clip = speech["ls_2412-153948-0002"]
    result = run_cli("transcribe", str(clip.path), *TINY, "--language", "en")
    assert wer(clip.text, result.stdout) < 0.15, result.stdout
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1


@pytest.mark.parametrize("fmt", ["vtt", "json", "verbose_json"])
def test_each_format_is_written_and_parses_back(run_cli, speech, tmp_path, fmt):
    clip = speech["ls_2412-153948-0002"]
    words = ["--word-timestamps"] if fmt == "verbose_json" else []
    run_cli("transcribe", str(clip.path), *TINY, "--format", fmt, "--output-dir", str(tmp_path),
            *words)  # fmt: skip
    [written] = tmp_path.iterdir()
    assert written.name == clip.path.stem + (".vtt" if fmt == "vtt" else ".json")
    if fmt == "vtt":
        cues = webvtt.read(str(written)).captions
        text = " ".join(c.text for c in cues)
        assert cues and cues[-1].end_in_seconds <= clip.duration + 0.5
    else:
        body = json.loads(written.read_text())
        text = body["text"]
        assert body["usage"] == {"type": "duration", "seconds": 4}
        if fmt == "verbose_json":
            assert body["language"] == "english" and body["segments"]
            assert body["duration"] == pytest.approx(clip.duration, abs=0.05)
            words = [w["word"].strip(" .,").lower() for w in body["words"]]
            assert "honest" in words
    assert wer(clip.text, text) < 0.15, text


def test_a_folder_gives_one_output_per_input_with_progress(run_cli, speech, tmp_path):
    inputs = tmp_path / "recordings"
    (inputs / "more").mkdir(parents=True)
    chosen = {"ls_1089-134691-0000": inputs, "sphinx_cards_001": inputs,
              "sphinx_goforward": inputs / "more"}  # fmt: skip
    for clip_id, folder in chosen.items():
        (folder / speech[clip_id].path.name).symlink_to(speech[clip_id].path)
    (inputs / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    result = run_cli("transcribe", str(inputs), *TINY, "-f", "srt", "-o", str(out), "--progress")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.srt"))
    assert written == ["ls_1089-134691-0000.srt", "more/sphinx_goforward.srt",
                       "sphinx_cards_001.srt"]  # fmt: skip
    for clip_id, folder in chosen.items():
        name = (folder / speech[clip_id].path.name).relative_to(inputs).with_suffix(".srt")
        cues = list(srt.parse((out / name).read_text()))
        assert cues[0].index == 1
        text = " ".join(c.content for c in cues)
        assert wer(speech[clip_id].text, text) <= 0.34, (clip_id, text)
    # The progress bar: audio time done / total, and the speed.
    assert "audio" in result.stderr and "real time" in result.stderr, result.stderr
    assert "3 of 3 files" in result.stderr


def test_server_mode_sends_the_files_to_a_running_server(server, speech, tmp_path):
    clip = speech["ls_1089-134691-0001"]
    env = {**os.environ, "HARKEN_API_KEY": ""}
    result = subprocess.run(
        [sys.executable, "-m", "harken", "transcribe", str(clip.path), *TINY, "--format", "srt",
         "--server", server.url],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cues = list(srt.parse(result.stdout))
    assert cues and cues[0].index == 1
    assert wer(clip.text, " ".join(c.content for c in cues)) < 0.15, result.stdout


def test_server_mode_with_and_without_the_key(keyed_server, speech, run_cli):
    clip = speech["ls_1089-134691-0000"]
    refused = run_cli("transcribe", str(clip.path), "--server", keyed_server.url, expect=1)
    assert "API key" in message(refused)
    accepted = run_cli(
        "transcribe", str(clip.path), "--server", f"{keyed_server.url}/v1",
        "--api-key", "sk-test-two", "-f", "json",
    )  # fmt: skip
    assert wer(clip.text, json.loads(accepted.stdout)["text"]) < 0.3


def test_mistakes_are_explained(run_cli, speech, tmp_path):
    clip = speech["ls_1089-134691-0000"]
    missing = run_cli("transcribe", str(tmp_path / "nope.wav"), expect=2)
    assert "no such file or folder" in message(missing)
    bad_format = run_cli("transcribe", str(clip.path), "--format", "docx", expect=2)
    assert "txt, srt, vtt, json, verbose_json" in message(bad_format)
    english_only = run_cli("transcribe", str(clip.path), *TINY, "--language", "de", expect=2)
    assert "English-only" in message(english_only)
    unknown = run_cli("transcribe", str(clip.path), "--model", "whisper-huge", expect=2)
    assert "whisper-huge" in message(unknown) and "harken models" in message(unknown)
    # Word timestamps only fit verbose_json: the message says how to ask for it.
    no_words = run_cli("transcribe", str(clip.path), *TINY, "-f", "srt", "--word-timestamps",
                       expect=2)  # fmt: skip
    assert "--word-timestamps" in message(no_words)
    assert "-f srt,verbose_json" in message(no_words)
    both_json = run_cli("transcribe", str(clip.path), "-f", "json,verbose_json", expect=2)
    assert "pick one" in message(both_json)
    unknown_language = run_cli("transcribe", str(clip.path), *TINY, "-l", "klingon", expect=2)
    assert "klingon" in message(unknown_language) and "--language" in message(unknown_language)
    (tmp_path / "harken.toml").write_text("beam_size = 1\n")
    both = run_cli("transcribe", str(clip.path), "-c", str(tmp_path / "harken.toml"),
                   "--server", "http://127.0.0.1:1", expect=2)  # fmt: skip
    assert "drop --config or --server" in message(both)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "same.flac").symlink_to(clip.path)
    clash = run_cli("transcribe", str(tmp_path / "a" / "same.flac"),
                    str(tmp_path / "b" / "same.flac"), "-o", str(tmp_path), expect=2)  # fmt: skip
    assert "same.txt" in message(clash)


def test_models_lists_the_catalog_and_where_the_weights_are(run_cli, harken_home):
    listing = json.loads(run_cli("models", "--json").stdout)
    by_name = {row["name"]: row for row in listing}
    assert by_name["whisper-base"]["default"] is True
    assert by_name["whisper-base"]["aliases"] == ["mimo-v2.5-asr", "whisper-1"]
    assert str(harken_home) in by_name["whisper-base"]["weights"]
    assert (Path(by_name["whisper-tiny.en"]["weights"]) / "model.bin").is_file()
    text = run_cli("models").stdout
    assert "whisper-tiny.en" in text and "weights:" in text


def test_version_help_and_short_options(run_cli, speech):
    assert run_cli("--version").stdout.strip() == harken.__version__
    assert run_cli("-V").stdout.strip() == harken.__version__
    assert "transcribe" in run_cli("-h").stdout
    clip = speech["sphinx_cards_001"]
    short = run_cli("transcribe", str(clip.path), "-m", "whisper-tiny.en", "-l", "en")
    assert wer(clip.text, short.stdout) < 0.5, short.stdout


def test_every_option_has_help():
    command = typer.main.get_command(app)
    commands = command.commands  # type: ignore[attr-defined]
    assert {"serve", "transcribe", "models", "eval"} <= set(commands)
    for name, sub in commands.items():
        for param in sub.params:
            if param.param_type_name == "option":
                assert param.help, f"harken {name} {param.opts[0]} has no help text"


def test_several_formats_from_one_transcription(run_cli, speech, tmp_path):
    clip = speech["ls_2412-153948-0002"]
    result = run_cli("transcribe", str(clip.path), *TINY, "-f", "srt,vtt,txt,verbose_json",
                     "--word-timestamps", "-o", str(tmp_path), "--progress")  # fmt: skip
    stem = clip.path.stem
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{stem}{suffix}" for suffix in (".srt", ".vtt", ".txt", ".json")
    )
    text = (tmp_path / f"{stem}.txt").read_text().strip()
    assert wer(clip.text, text) < 0.15
    assert " ".join(c.content for c in srt.parse((tmp_path / f"{stem}.srt").read_text())) == text
    body = json.loads((tmp_path / f"{stem}.json").read_text())
    assert body["text"] == text and body["words"]
    # The progress bar labels its columns: audio time, speed, wall time.
    assert "audio" in result.stderr and "elapsed" in result.stderr, result.stderr


def test_a_refused_connection_names_the_server_on_one_line(run_cli, speech):
    url = f"http://127.0.0.1:{free_port()}"
    clip = speech["sphinx_cards_001"]
    refused = run_cli("transcribe", str(clip.path), "--server", url, expect=1)
    lines = [line for line in refused.stderr.splitlines() if url in line]
    assert len(lines) == 1, refused.stderr
    assert "harken serve" in lines[0] and "Traceback" not in refused.stderr


@pytest.mark.parametrize("clip_id", ["ls_1089-134691-0001", "sphinx_goforward"])
def test_in_process_and_server_give_the_servers_files(run_cli, server, speech, tmp_path, clip_id):
    """The same clip three ways: the CLI in-process, the CLI with --server, the server itself."""
    clip = speech[clip_id]
    formats = ["text", "srt", "vtt", "json", "verbose_json"]
    local, remote = tmp_path / "local", tmp_path / "remote"
    for folder, extra in ((local, []), (remote, ["--server", server.url])):
        for pick in ("txt,srt,vtt,verbose_json", "json"):
            run_cli("transcribe", str(clip.path), *TINY, "-l", "en", "-f", pick, "-o",
                    str(folder / pick), *extra)  # fmt: skip
    suffixes = {"text": ".txt", "srt": ".srt", "vtt": ".vtt", "json": ".json",
                "verbose_json": ".json"}  # fmt: skip
    for fmt in formats:
        response = httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            files={"file": (clip.path.name, clip.bytes())},
            data={"model": "whisper-tiny.en", "language": "en", "response_format": fmt},
            timeout=600,
        )
        assert response.status_code == 200, response.text
        pick = "json" if fmt == "json" else "txt,srt,vtt,verbose_json"
        name = f"{pick}/{clip.path.stem}{suffixes[fmt]}"
        written = [(folder / name).read_text() for folder in (local, remote)]
        if fmt in ("json", "verbose_json"):
            expected = response.json()
            for body in map(json.loads, written):
                assert body["text"] == expected["text"] and body["usage"] == expected["usage"]
                keys = ("start", "end", "text", "tokens")
                assert [[s[k] for k in keys] for s in body.get("segments", [])] == [
                    [s[k] for k in keys] for s in expected.get("segments", [])
                ]
        else:
            assert written == [response.text.rstrip("\n") + "\n"] * 2, (fmt, written)


def test_a_config_file_reaches_the_settings_without_the_environment(run_cli, tmp_path):
    config = tmp_path / "harken.toml"
    config.write_text('[aliases]\n"asr" = "whisper-tiny.en"\n')
    before = dict(os.environ)
    listing = json.loads(run_cli("models", "-c", str(config), "--json").stdout)
    assert "asr" in {row["name"]: row for row in listing}["whisper-tiny.en"]["aliases"]
    assert dict(os.environ) == before
    missing = run_cli("models", "--config", str(tmp_path / "nope.toml"), expect=2)
    assert "no such file" in message(missing)
