"""uvicorn's server with a shutdown that drains before it closes the port.

uvicorn, told to stop, closes its listening socket first and then waits for work in progress. A
client that connects in that instant (the kernel has already accepted the connection) is dropped
without an answer, and cannot tell whether its request was done. Here the port stays open while
admitted work finishes: new work gets a 503 in the contract's error body, with `Connection:
close`, and `/health` says 503, so a load balancer moves traffic away. Only then does uvicorn's own
shutdown run. A second Ctrl-C stops at once, as it does in uvicorn.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from harken.service.transcription import TranscriptionService

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: TranscriptionService, grace: float) -> None:
        super().__init__(config)
        self.service = service
        self.grace = grace

    async def main_loop(self) -> None:
        await super().main_loop()
        if self.force_exit:
            return
        log.info(
            "draining: new work is refused; waiting up to %g s for %d admitted request(s)",
            self.grace,
            self.service.scheduler.admitted,
        )
        drained = asyncio.create_task(self.service.drain(self.grace))
        while not drained.done():
            if self.force_exit:
                drained.cancel()
                return
            await self.on_tick(0)  # keeps the Date header fresh
            await asyncio.wait([drained], timeout=0.1)
