"""The engine's objects built from the operator's settings: a transcriber for a catalog
entry, and how long audio is cut. The engine itself knows only its own types."""

from __future__ import annotations

from collections.abc import Callable

from harken.catalog import ModelEntry
from harken.config import Settings
from harken.engine import SegmentationOptions, Transcriber


def segmentation_from_settings(settings: Settings) -> SegmentationOptions:
    """How long audio is cut at pauses, as the operator configured it (HARKEN_VAD_*)."""
    return SegmentationOptions(
        enabled=settings.vad_enabled,
        threshold=settings.vad_threshold,
        min_silence_ms=settings.vad_min_silence_ms,
        speech_pad_ms=settings.vad_speech_pad_ms,
        max_piece_seconds=settings.vad_max_piece_seconds,
        min_audio_seconds=min(30.0, settings.vad_max_piece_seconds),
        level=settings.level_speech,
    )


def load_transcriber(entry: ModelEntry, settings: Settings) -> Transcriber:
    """Load the model behind a catalog entry. Blocking (seconds); call off the event loop."""
    if entry.backend == "faster-whisper":
        from harken.engine.whisper import FasterWhisperTranscriber

        return FasterWhisperTranscriber(
            entry.name,
            entry.weights(settings),
            device=settings.device,
            compute_type=entry.config.compute_type or settings.compute_type,
            cpu_threads=settings.cpu_threads,
            beam_size=entry.config.beam_size or settings.beam_size,
            max_concurrency=settings.workers,
            threads_per_worker=settings.threads_per_worker,
            batch_size=settings.batch_size,
            download_root=settings.home / "hub",
        )
    if entry.backend == "upstream":
        from harken.engine.upstream import UpstreamTranscriber
        from harken.languages import LANGUAGE_NAMES
        from harken.service.upstream import upstream_config

        languages = entry.config.languages
        return UpstreamTranscriber(
            entry.name,
            upstream_config(entry.name, entry.config),
            language_names=LANGUAGE_NAMES,
            languages=frozenset(languages) if languages is not None else None,
            count_tokens=whisper_token_counter(),
        )
    raise ValueError(f"unknown backend {entry.backend!r}")


def whisper_token_counter() -> Callable[[str], int] | None:
    """Counts tokens in multilingual Whisper's tokenizer (from the built-in model's package,
    without assembling its weights), for the usage of models that have no tokenizer here."""
    from tokenizers import Tokenizer

    from harken.catalog import WeightsUnavailable, whisper_base_tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(whisper_base_tokenizer()))
    except (WeightsUnavailable, OSError):
        return None

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids) if text else 0

    return count
