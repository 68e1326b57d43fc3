"""Runs blocking model work on worker threads, with admission control and cancellation.

The event loop never runs model code. Each admitted job holds one place until it ends; when
every worker is busy and the queue is full, new work is refused at once with a 429 instead of
piling up memory and timing out.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from harken.errors import Overloaded, RateLimited

T = TypeVar("T")
H = TypeVar("H")

_HEAD, _ITEM, _ERROR, _DONE = range(4)


class Scheduler:
    def __init__(self, workers: int, max_queue: int) -> None:
        self.workers = max(1, workers)
        self.capacity = self.workers + max(0, max_queue)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="harken-engine")
        self._admitted = 0
        self._running = 0
        self._lock = threading.Lock()
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def admitted(self) -> int:
        """Jobs queued or running."""
        return self._admitted

    @property
    def running(self) -> int:
        return self._running

    def _admit(self) -> None:
        if self._closing:
            raise Overloaded("The server is shutting down and takes no new work.")
        with self._lock:
            if self._admitted >= self.capacity:
                raise RateLimited(
                    "The server is at capacity; retry after a short wait.",
                    headers={"Retry-After": "1"},
                )
            self._admitted += 1
            self._idle.clear()

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
            if self._admitted == 0:
                self._idle.set()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking call on a worker thread (admitted like any job)."""
        self._admit()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._counted, fn, args
            )
        finally:
            self._release()

    def _counted(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._lock:
            self._running += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._running -= 1

    async def stream(self, start: Callable[[], tuple[H, Iterator[T]]]) -> JobStream[H, T]:
        """Start a job whose `start()` returns a head value and an iterator of results.

        Returns once the head is known (for a transcription: the detected language), with the
        results still being produced. Closing the stream, or the client going away, stops the
        job before its next result.
        """
        self._admit()
        job: JobStream[H, T] = JobStream(self._release)
        try:
            asyncio.get_running_loop().run_in_executor(
                self._executor, self._counted, job._produce, (start,)
            )
            await job._wait_head()
        except BaseException:
            await job.aclose()
            raise
        return job

    async def drain(self, timeout: float) -> bool:
        """Stop admitting work and wait up to `timeout` s for what was admitted to finish."""
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def shutdown(self) -> None:
        self._closing = True
        self._executor.shutdown(wait=False, cancel_futures=True)


class JobStream(Generic[H, T]):
    """The consumer's end of a streaming job: `head`, then async iteration over the results."""

    head: H

    def __init__(self, release: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._finished = threading.Event()
        self._release = release
        self._released = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- producer side (worker thread)
    def _post(self, kind: int, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._cancelled.set()

    def _produce(self, start: Callable[[], tuple[H, Iterator[T]]]) -> None:
        try:
            if self._cancelled.is_set():
                return
            head, items = start()
            self._post(_HEAD, head)
            for item in items:
                if self._cancelled.is_set():
                    break
                self._post(_ITEM, item)
        except BaseException as exc:
            self._post(_ERROR, exc)
        else:
            self._post(_DONE, None)
        finally:
            self._finished.set()
            try:
                self._loop.call_soon_threadsafe(self._release_once)
            except RuntimeError:
                self._release_once()

    def _release_once(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    # -- consumer side (event loop)
    async def _wait_head(self) -> None:
        kind, value = await self._queue.get()
        if kind == _ERROR:
            raise value
        if kind != _HEAD:
            raise RuntimeError("job ended before it started")
        self.head = value

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        try:
            while True:
                kind, value = await self._queue.get()
                if kind == _ITEM:
                    yield value
                elif kind == _ERROR:
                    raise value
                else:
                    return
        finally:
            self._cancelled.set()

    async def aclose(self) -> None:
        self._cancelled.set()

    def finished(self) -> bool:
        """True once the worker thread has let go of the job (for tests and metrics)."""
        return self._finished.is_set()
