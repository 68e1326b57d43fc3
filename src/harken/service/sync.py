"""The service for callers without an event loop (`harken transcribe`, `harken eval`): the same
front door as the server (model loading, option checks, decoding limits, scheduling, long-audio
cutting), driven on a private event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Self

from harken.config import Settings
from harken.engine import Segment, TranscriptionInfo, TranscriptionOptions
from harken.service.transcription import LoadedModel, TranscriptionService


class SyncService:
    def __init__(self, settings: Settings) -> None:
        self._runner = asyncio.Runner()

        async def create() -> TranscriptionService:
            return TranscriptionService(settings)

        self.service = self._runner.run(create())

    def model(self, name: str | None) -> LoadedModel:
        """The model behind a name or alias, loaded on first use (seconds)."""
        return self._runner.run(self.service.model(name))

    def check(self, model: LoadedModel, options: TranscriptionOptions) -> None:
        self.service.check(model, options)

    def transcribe(
        self,
        model: LoadedModel,
        data: bytes,
        options: TranscriptionOptions,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> tuple[list[Segment], TranscriptionInfo]:
        """Decode `data` and transcribe it; `on_segment` sees each segment as it is decoded."""

        async def run() -> tuple[list[Segment], TranscriptionInfo]:
            audio = await self.service.decode(data)
            job = await self.service.transcribe(model, audio, options)
            segments = []
            try:
                async for segment in job:
                    segments.append(segment)
                    if on_segment is not None:
                        on_segment(segment)
            finally:
                await job.aclose()
            return segments, job.head

        return self._runner.run(run())

    def close(self) -> None:
        self._runner.run(self.service.shutdown(0))
        self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
