"""Runs blocking model work on worker threads, with admission control, deadlines and
cancellation.

The event loop never runs model code. Up to `max_active` jobs decode at once, each on its own
thread; their model calls meet in the engine's batcher (engine/batching.py), which runs the
windows of several requests as one batch, so the threads are cheap and the CPU does the
batched work. Up to `max_queue` more jobs wait, first come first served. Beyond that, new work
is refused at once (`RateLimited`, saying when to retry), instead of piling up memory and timing
out. Every job has a deadline from the moment it is admitted; past it the job is cancelled
(`DeadlineExceeded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from harken.engine.batching import cancel_scope
from harken.errors import DeadlineExceeded, RateLimited, ShuttingDown
from harken.service.metrics import Metrics

if TYPE_CHECKING:
    from harken.config import Settings

T = TypeVar("T")
H = TypeVar("H")

_HEAD, _ITEM, _ERROR, _DONE = range(4)


class Scheduler:
    def __init__(
        self,
        workers: int,
        max_queue: int,
        *,
        max_active: int | None = None,
        deadline_seconds: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.workers = max(1, workers)
        self.max_active = max(1, max_active or self.workers)
        self.capacity = self.max_active + max(0, max_queue)
        self.deadline_seconds = deadline_seconds if deadline_seconds else None
        self.metrics = metrics or Metrics()
        self.metrics.watch_scheduler(self)
        self._executor = ThreadPoolExecutor(self.max_active, thread_name_prefix="harken-job")
        self._admitted = 0
        self._running = 0
        self._lock = threading.Lock()
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._recent_job_seconds = 5.0  # a moving average, for Retry-After
        # Run on a spare thread once no work has been admitted for `idle_seconds`.
        self.when_idle: Callable[[], None] | None = None
        self.idle_seconds = 10.0
        self._admissions = 0  # so that an idle timer can tell whether work came meanwhile

    @classmethod
    def from_settings(cls, settings: Settings) -> Scheduler:
        return cls(
            settings.workers,
            settings.max_queue,
            max_active=settings.active_jobs,
            deadline_seconds=settings.request_timeout_seconds,
        )

    @property
    def admitted(self) -> int:
        """Jobs queued or running."""
        return self._admitted

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self._running)

    def retry_after(self) -> int:
        """Seconds until a place is likely to free up: the queue ahead, at the recent pace."""
        rounds = (self.waiting + 1) / self.max_active
        return max(1, min(60, math.ceil(self._recent_job_seconds * rounds)))

    def _admit(self) -> None:
        if self._closing:
            raise ShuttingDown()
        with self._lock:
            if self._admitted >= self.capacity:
                self.metrics.jobs.labels("rejected").inc()
                retry_after = self.retry_after()
                raise RateLimited(
                    f"The server is at capacity ({self.capacity} requests in progress or "
                    f"waiting); retry in {retry_after} s.",
                    retry_after=retry_after,
                )
            self._admitted += 1
            self._admissions += 1
            self._idle.clear()

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
            idle = self._admitted == 0
            if idle:
                self._idle.set()
            admissions = self._admissions
        if idle and self.when_idle is not None and not self._closing:
            with contextlib.suppress(RuntimeError):  # no running loop: the server is stopping
                asyncio.get_running_loop().call_later(
                    self.idle_seconds, self._still_idle, admissions
                )

    def _still_idle(self, admissions: int) -> None:
        if self._admissions == admissions and not self._closing and self.when_idle is not None:
            asyncio.get_running_loop().run_in_executor(None, self.when_idle)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking call on a worker thread (admitted like any job)."""
        self._admit()
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, self._counted, fn, args
            )
            if self.deadline_seconds is None:
                return await future
            try:
                return await asyncio.wait_for(future, self.deadline_seconds)
            except TimeoutError:
                raise _deadline_error(self.deadline_seconds) from None
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
        results still being produced. Closing the stream, the client going away, or the
        deadline passing stops the job before its next model call.
        """
        self._admit()
        job: JobStream[H, T] = JobStream(self._release, self.deadline_seconds, self._finished)
        try:
            asyncio.get_running_loop().run_in_executor(
                self._executor, self._counted, job._produce, (start,)
            )
            await job._wait_head()
        except BaseException:
            await job.aclose()
            raise
        return job

    def _finished(self, job: JobStream[Any, Any], outcome: str) -> None:
        """Called on the worker thread when a job lets go of its place."""
        self.metrics.jobs.labels(outcome).inc()
        if job.started_at is None:
            return
        busy = time.monotonic() - job.started_at
        self.metrics.queue_wait.observe(job.started_at - job.admitted_at)
        self._recent_job_seconds = 0.8 * self._recent_job_seconds + 0.2 * busy
        duration = getattr(job.head_value, "duration", None)  # a TranscriptionInfo's
        if outcome == "ok" and isinstance(duration, float | int) and duration > 0:
            self.metrics.audio_seconds.inc(duration)
            self.metrics.real_time_factor.observe(busy / duration)

    async def drain(self, timeout: float) -> bool:
        """Stop admitting work and wait up to `timeout` s for what was admitted to finish."""
        self._closing = True
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def shutdown(self) -> None:
        self._closing = True
        self._executor.shutdown(wait=False, cancel_futures=True)


def _deadline_error(seconds: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"The request took longer than this server's limit of {seconds:g} s and was stopped; "
        "send shorter audio or retry when the server is less busy."
    )


class JobStream(Generic[H, T]):
    """The consumer's end of a streaming job: `head`, then async iteration over the results."""

    head: H

    def __init__(
        self,
        release: Callable[[], None],
        deadline_seconds: float | None = None,
        finished: Callable[[JobStream[Any, Any], str], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._release = release
        self._released = False
        self._on_finished = finished
        self.admitted_at = time.monotonic()
        self._deadline_seconds = deadline_seconds
        self._deadline = None if deadline_seconds is None else self.admitted_at + deadline_seconds
        self.started_at: float | None = None
        self.head_value: Any = None

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
        outcome = "cancelled"
        try:
            if self._cancelled.is_set():
                return
            self.started_at = time.monotonic()
            with cancel_scope(self._cancelled):
                head, items = start()
                self.head_value = head
                self._post(_HEAD, head)
                for item in items:
                    if self._cancelled.is_set():
                        break
                    self._post(_ITEM, item)
                else:
                    # The items may also end early because the job was cancelled (the engine
                    # stops between pieces): that is still a cancelled job.
                    outcome = "cancelled" if self._cancelled.is_set() else "ok"
        except BaseException as exc:
            outcome = "cancelled" if self._cancelled.is_set() else "error"
            self._post(_ERROR, exc)
        else:
            self._post(_DONE, None)
        finally:
            if self._on_finished is not None:
                self._on_finished(self, outcome)
            try:
                self._loop.call_soon_threadsafe(self._release_once)
            except RuntimeError:
                self._release_once()

    def _release_once(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    # -- consumer side (event loop)
    async def _next(self) -> tuple[int, Any]:
        if self._deadline is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), self._deadline - time.monotonic())
        except TimeoutError:
            self._cancelled.set()
            raise _deadline_error(self._deadline_seconds or 0.0) from None

    async def _wait_head(self) -> None:
        kind, value = await self._next()
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
                kind, value = await self._next()
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
