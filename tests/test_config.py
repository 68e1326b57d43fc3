"""Operator configuration: a TOML file, HARKEN_* variables, keys files, added models and aliases,
and the packaged weights assembled offline and checked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from harken.catalog import (
    BASE_MODEL_BIN_SHA256,
    BASE_MODEL_BIN_SIZE,
    Catalog,
    assemble_whisper_base,
    packaged_tiny_en,
)
from harken.config import Settings
from harken.errors import ModelNotFound
from tests.conftest import run_server


def test_toml_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "harken.toml"
    config.write_text(
        'default_model = "whisper-tiny.en"\n'
        "beam_size = 3\n"
        "[models.my-model]\n"
        f'path = "{packaged_tiny_en(Settings())}"\n'
        "[aliases]\n"
        '"mimo-v2.5-asr" = "my-model"\n'
    )
    monkeypatch.setenv("HARKEN_CONFIG", str(config))
    monkeypatch.setenv("HARKEN_BEAM_SIZE", "2")  # the environment wins over the file
    monkeypatch.setenv("HARKEN_API_KEYS", "k1, k2")
    settings = Settings()
    assert settings.default_model == "whisper-tiny.en"
    assert settings.beam_size == 2
    assert settings.api_keys == ["k1", "k2"]
    catalog = Catalog(settings)
    assert catalog.resolve("mimo-v2.5-asr").name == "my-model"
    assert catalog.resolve("whisper-1").name == "whisper-base"
    assert catalog.resolve(None).name == "whisper-tiny.en"
    with pytest.raises(ModelNotFound):
        catalog.resolve("whisper-large")


def test_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nsk-a\n\nsk-b  # ops\n")
    settings = Settings(api_keys=["sk-c"], api_keys_file=keys)
    assert settings.all_api_keys() == ["sk-c", "sk-a", "sk-b"]


def test_alias_to_an_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        Catalog(Settings(aliases={"asr": "whisper-huge"}))


def test_base_weights_are_assembled_once_and_checked(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    target = assemble_whisper_base(settings)
    model_bin = target / "model.bin"
    assert model_bin.stat().st_size == BASE_MODEL_BIN_SIZE
    digest = hashlib.sha256(model_bin.read_bytes()).hexdigest()
    assert digest == BASE_MODEL_BIN_SHA256
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (target / name).is_file()
    mtime = model_bin.stat().st_mtime_ns
    assert assemble_whisper_base(settings) == target
    assert model_bin.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_operator_model_directory_serves_requests(harken_home: Path, speech) -> None:
    tiny = packaged_tiny_en(Settings())
    with run_server(
        harken_home,
        models={"ops-model": {"path": str(tiny)}},
        aliases={"mimo-v2.5-asr": "ops-model"},
        default_model="ops-model",
        preload=["ops-model"],
    ) as running:
        ids = {m["id"] for m in httpx.get(f"{running.url}/v1/models").json()["data"]}
        assert {"ops-model", "mimo-v2.5-asr"} <= ids
        clip = speech["sphinx_goforward"]
        body = {
            "model": "mimo-v2.5-asr",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": clip.data_url()}}],
                }
            ],
        }
        reply = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=600).json()
        assert "forward" in reply["choices"][0]["message"]["content"].lower()


def test_server_defaults_cut_audio_as_the_engine_defaults_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The VAD defaults are stated twice (HARKEN_VAD_* and the engine's SegmentationOptions,
    which `transcribe_long` falls back to when a caller gives none): they must not drift."""
    from harken.engine import SegmentationOptions
    from harken.service.loading import segmentation_from_settings

    for name in ("VAD_ENABLED", "VAD_THRESHOLD", "VAD_MIN_SILENCE_MS", "VAD_SPEECH_PAD_MS",
                 "VAD_MAX_PIECE_SECONDS", "LEVEL_SPEECH"):  # fmt: skip
        monkeypatch.delenv(f"HARKEN_{name}", raising=False)
    assert segmentation_from_settings(Settings()) == SegmentationOptions()
