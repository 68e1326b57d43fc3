"""`harken eval` and harken.evaluation: error rates users can trust on their own recordings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import jiwer
import pytest
from typer.testing import CliRunner

from harken.cli import app
from harken.evaluation import (
    ManifestError,
    by_language,
    count_errors,
    normalize_text,
    read_manifest,
    score_clip,
)
from tests import conftest
from tests.conftest import SPEECH_DIR

# Short English clips with different reference styles (LibriSpeech upper case, a spoken number,
# lower case), and one Chinese clip that the English-only model must skip, not score.
EVAL_CLIPS = ["ls_1089-134691-0001", "ls_2412-153948-0002", "sphinx_goforward",
              "librivox_sns01_0880", "aishell1_BAC009S0724W0121"]  # fmt: skip


# --- normalisation and scoring
def test_reference_styles_agree_after_normalisation():
    assert normalize_text("MISTER QUILTER IS THE APOSTLE") == normalize_text(
        "Mr. Quilter is the apostle."
    )
    assert normalize_text("go forward ten meters") == normalize_text("Go forward 10 meters.")
    # Curly quotes are apostrophes; contractions and spellings are evened out (Whisper's rules).
    assert normalize_text("It’s “fine”—isn't it?") == normalize_text("it's fine, isn't it")
    assert normalize_text("It’s “fine”—isn't it?") == "it is fine is not it"
    assert normalize_text("COUNSELLED") == normalize_text("counseled")
    assert normalize_text("1,000 people") == normalize_text("one thousand people")
    assert normalize_text("3.5 percent") == normalize_text("three point five percent")
    # Digits stay digits outside English: the number words are the language's own.
    assert normalize_text("20 de Septiembre de 1881.", "es") == "20 de septiembre de 1881"


def test_chinese_is_scored_by_characters_without_segmentation_spaces():
    reference = "甚至 出现 交易 几乎 停滞 的 情况"
    assert normalize_text(reference, "zh") == normalize_text("甚至出现交易几乎停滞的情况。", "zh")
    item = read_manifest(SPEECH_DIR / "manifest.jsonl", languages=["zh"], limit=2)[1]
    clip = score_clip(item, "甚至出现交易几乎停止的情况")
    assert clip.metric == "cer"
    assert (clip.errors, clip.reference_length) == (1, 13)


def test_errors_are_jiwers_alignment():
    pairs = [("a b c d", "a x c d e"), ("the cat sat", "cat sat on the mat"), ("one", ""),
             ("", "stray words")]  # fmt: skip
    for reference, hypothesis in pairs:
        words = jiwer.process_words(reference, hypothesis)
        expected = words.substitutions + words.deletions + words.insertions
        assert count_errors(reference, hypothesis) == expected, (reference, hypothesis)


def test_rates_are_summed_over_clips_per_language(speech):
    items = {i.id: i for i in read_manifest(SPEECH_DIR / "manifest.jsonl", languages=["en"])}
    perfect, cut = items["jfk_inaugural_1961"], items["ls_1089-134686-0001"]
    scores = [score_clip(perfect, perfect.text), score_clip(cut, "stuff it into you")]
    [english] = by_language(scores)
    assert english.language == "en" and english.metric == "wer"
    assert english.errors == 4  # "his belly counselled him" missing
    assert english.reference_length == len(perfect.text.split()) + 8
    assert english.rate == pytest.approx(4 / english.reference_length)


def test_manifest_filters_and_errors(tmp_path):
    manifest = read_manifest(SPEECH_DIR / "manifest.jsonl", languages=["de", "ES"])
    assert {i.language for i in manifest} == {"de", "es"} and len(manifest) == 4
    assert all(i.path.is_file() for i in manifest)
    assert len(read_manifest(SPEECH_DIR / "manifest.jsonl", limit=3)) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.wav", "text": "hi", "language": "en"}\n{"path": "b.wav"}\n')
    with pytest.raises(ManifestError, match="line 2"):
        read_manifest(bad)


# --- the command, against the tests' own measurement
def write_manifest(tmp_path: Path, ids: list[str]) -> Path:
    lines = []
    for line in (SPEECH_DIR / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["id"] in ids:
            record["path"] = str(SPEECH_DIR / record["path"])  # absolute: the audio stays put
            lines.append(json.dumps(record, ensure_ascii=False))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_eval_prints_wer_per_language_close_to_the_tests_measurement(
    tmp_path, speech, server, harken_home
):
    manifest = write_manifest(tmp_path, EVAL_CLIPS)
    result = CliRunner().invoke(
        app,
        ["eval", str(manifest), "--model", "whisper-tiny.en", "--details"],
        env={"HARKEN_HOME": str(harken_home)},
    )
    assert result.exit_code == 0, result.output
    # The English-only model skips Chinese instead of scoring nonsense.
    assert "skipped clips in languages whisper-tiny.en does not know: zh" in result.stderr
    row = re.search(r"^en\s+WER\s+(\d+)\s+([\d.]+)\s+(\d+)/(\d+)\s+([\d.]+)%$", result.stdout, re.M)
    assert row, result.stdout
    assert int(row[1]) == 4
    printed = float(row[5]) / 100

    # The same clips through the server, scored with jiwer and the tests' own normaliser.
    references, hypotheses = [], []
    english = [i for i in EVAL_CLIPS if speech[i].language == "en"]
    for clip_id in english:
        clip = speech[clip_id]
        response = httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            files={"file": (clip.path.name, clip.bytes())},
            data={"model": "whisper-tiny.en", "language": "en"},
            timeout=600,
        )
        assert response.status_code == 200, response.text
        references.append(conftest.normalize_text(clip.text))
        hypotheses.append(conftest.normalize_text(response.json()["text"]))
    measured = jiwer.wer(references, hypotheses)
    assert printed == pytest.approx(measured, abs=0.03), (result.stdout, hypotheses)
    assert printed < 0.15


def test_eval_json_report_and_bad_manifest(tmp_path, harken_home):
    missing = CliRunner().invoke(app, ["eval", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    manifest = write_manifest(tmp_path, ["sphinx_cards_001"])
    result = CliRunner().invoke(
        app,
        ["eval", str(manifest), "--model", "whisper-tiny.en", "--json"],
        env={"HARKEN_HOME": str(harken_home)},
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == "whisper-tiny.en"
    [language] = report["languages"]
    assert language["language"] == "en" and language["metric"] == "wer"
    assert language["clips"] == 1 and language["reference_length"] == 3
    assert report["clips"][0]["reference"] == "ten of clubs"


def test_eval_against_a_server_skips_languages_its_model_lacks(tmp_path, server):
    manifest = write_manifest(tmp_path, ["sphinx_cards_001", "picovoice_test_de"])
    result = CliRunner().invoke(
        app,
        ["eval", str(manifest), "--server", server.url, "--model", "whisper-tiny.en", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert "does not know: de" in result.stderr
    report = json.loads(result.stdout)
    assert [c["id"] for c in report["clips"]] == ["sphinx_cards_001"]
    assert report["clips"][0]["rate"] < 0.5


@pytest.mark.parametrize(("model", "language"), [("whisper-tiny.en", "en"), ("whisper-base", "zh")])
def test_eval_equals_jiwer_on_the_speech_set(harken_home, model, language):
    """Every English clip of the test set (every Chinese one, scored by characters): the
    figures `harken eval` prints are jiwer's, per clip and per language."""
    result = CliRunner().invoke(
        app,
        ["eval", str(SPEECH_DIR / "manifest.jsonl"), "-m", model, "-l", language, "--json"],
        env={"HARKEN_HOME": str(harken_home)},
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    clips = report["clips"]
    expected_clips = [
        i for i in read_manifest(SPEECH_DIR / "manifest.jsonl") if i.language == language
    ]
    assert len(clips) == len(expected_clips) >= 4
    references = [normalize_text(c["reference"], language) for c in clips]
    hypotheses = [normalize_text(c["hypothesis"], language) for c in clips]
    for clip, reference, hypothesis in zip(clips, references, hypotheses, strict=True):
        words = jiwer.process_words(reference, hypothesis)
        assert clip["errors"] == words.substitutions + words.deletions + words.insertions
        assert clip["reference_length"] == len(reference.split())
    [summary] = report["languages"]
    assert summary["metric"] == ("cer" if language == "zh" else "wer")
    assert summary["rate"] == pytest.approx(jiwer.wer(references, hypotheses), abs=1e-12)
    assert summary["rate"] < 0.2, report
