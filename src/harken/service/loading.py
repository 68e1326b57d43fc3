"""The engine's objects built from the operator's settings: a transcriber for a catalog
entry, and how long audio is cut. The engine itself knows only its own types."""

from __future__ import annotations

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
    raise ValueError(f"unknown backend {entry.backend!r}")
