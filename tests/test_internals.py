"""The internals of other packages that harken reaches into, checked where it relies on them.

harken replaces faster-whisper's CTranslate2 model with a batcher and wraps its encoder call
(engine/batching.py, engine/whisper.py), runs faster-whisper's bundled Silero VAD session
itself (engine/segmentation.py), and extends uvicorn's server loop (api/serving.py). Those are
not public APIs: pyproject.toml pins the packages to the minor versions tested here, and this
test says what moved when a new version changes them.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

from harken.catalog import packaged_tiny_en
from harken.config import Settings

PINNED = ("faster-whisper", "ctranslate2", "onnxruntime", "uvicorn")


def moved(package: str, what: str) -> str:
    return (
        f"{package} {version(package)}: {what}. harken relies on this internal; see the pin in "
        "pyproject.toml and the module named in tests/test_internals.py before moving the pin."
    )


@pytest.mark.parametrize("package", PINNED)
def test_installed_versions_are_the_pinned_ones(package: str) -> None:
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = {
        line.split(">")[0].split("=")[0].split("<")[0].strip(): line
        for line in project["project"]["dependencies"]
    }
    spec = SpecifierSet(pins[package][len(package) :])
    assert "<" in str(spec), f"{package} is not pinned to a minor version in pyproject.toml"
    assert version(package) in spec, f"{package} {version(package)} is outside {spec}"


def test_faster_whisper_model_object() -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(packaged_tiny_en(Settings())), device="cpu", cpu_threads=1)
    for name in ("model", "hf_tokenizer", "feature_extractor", "supported_languages"):
        assert hasattr(model, name), moved("faster-whisper", f"WhisperModel has no .{name}")
    assert hasattr(model.feature_extractor, "n_samples"), moved(
        "faster-whisper", "the feature extractor has no n_samples"
    )
    encode = inspect.signature(model.encode)
    assert list(encode.parameters) == ["features"], moved(
        "faster-whisper", f"WhisperModel.encode{encode} (batching/encoding reuse wrap it)"
    )
    model.encode = model.encode  # type: ignore[method-assign]  # an instance attribute works
    assert "features" in inspect.signature(model.detect_language).parameters, moved(
        "faster-whisper", "WhisperModel.detect_language takes no features="
    )
    transcribe = inspect.signature(model.transcribe).parameters
    for name in ("language", "task", "beam_size", "temperature", "initial_prompt", "hotwords",
                 "word_timestamps", "vad_filter", "condition_on_previous_text",
                 "max_new_tokens"):  # fmt: skip
        assert name in transcribe, moved("faster-whisper", f"transcribe() lost {name}=")
    for name in ("sampling_rate", "hop_length", "nb_max_frames"):
        assert hasattr(model.feature_extractor, name), moved(
            "faster-whisper", f"the feature extractor has no {name} (drafts read it)"
        )
    whisper: Any = model.model
    for name in ("encode", "generate", "detect_language", "is_multilingual"):
        assert hasattr(whisper, name), moved("ctranslate2", f"models.Whisper has no .{name}")
    assert "to_cpu" in (whisper.encode.__doc__ or ""), moved(
        "ctranslate2", "models.Whisper.encode takes no to_cpu= (the batcher passes it)"
    )
    # A live draft's window is shorter than 30 s (engine/whisper.py): CTranslate2 encodes it.
    import ctranslate2
    import numpy as np

    short = np.zeros((1, model.feature_extractor.mel_filters.shape[0], 1100), dtype=np.float32)
    encoded = whisper.encode(ctranslate2.StorageView.from_array(short))
    assert encoded.shape[1] == 550, moved("ctranslate2", "a window under 30 s is not encoded")


def test_silero_session_inputs() -> None:
    from faster_whisper.vad import get_vad_model

    session = get_vad_model().session
    names = {i.name for i in session.get_inputs()}
    assert names == {"input", "h", "c"}, moved(
        "faster-whisper", f"the Silero VAD session takes {sorted(names)}, not input/h/c"
    )


def test_uvicorn_server_loop() -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app=None))
    for name in ("main_loop", "on_tick"):
        method = getattr(uvicorn.Server, name, None)
        assert inspect.iscoroutinefunction(method), moved(
            "uvicorn", f"Server.{name} is no longer a coroutine (api/serving.py overrides it)"
        )
    for name in ("force_exit", "should_exit"):
        assert hasattr(server, name), moved("uvicorn", f"Server has no .{name}")
