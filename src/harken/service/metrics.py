"""The server's Prometheus metrics, in a registry of their own.

One registry per app (not prometheus-client's global one), so that several apps in one
process (tests, embedding) each count only their own work. Values that already live elsewhere
(queue depth, busy workers, the batcher's counters) are read when scraped, not copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _SchedulerView(Protocol):
    @property
    def running(self) -> int: ...
    @property
    def waiting(self) -> int: ...

    max_active: int
    capacity: int


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "harken_http_requests", "HTTP requests by route and status.",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "harken_http_request_duration_seconds",
            "Time from the request's arrival to the last byte of its response.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.jobs = Counter(
            "harken_jobs",
            "Transcription jobs by outcome: ok, error, cancelled, rejected (429).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "harken_queue_wait_seconds", "Time a job waited for a worker after admission.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.audio_seconds = Counter(
            "harken_audio_seconds", "Seconds of audio transcribed (jobs that finished).",
            registry=r,
        )  # fmt: skip
        self.real_time_factor = Histogram(
            "harken_real_time_factor",
            "Processing seconds per second of audio, per job (lower is faster).",
            buckets=RTF_BUCKETS, registry=r,
        )  # fmt: skip
        # Live transcription (/v1/realtime): a session ends with the reason it ended.
        self.realtime_sessions_active = Gauge(
            "harken_realtime_sessions_active", "Live transcription sessions open now.",
            registry=r,
        )  # fmt: skip
        self.realtime_sessions_started = Counter(
            "harken_realtime_sessions_started", "Live transcription sessions opened.", registry=r
        )
        self.realtime_sessions_ended = Counter(
            "harken_realtime_sessions_ended",
            "Live transcription sessions closed, by reason: client_closed, client_gone, "
            "idle_timeout, session_too_long, too_many_sessions, shutdown, error.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.realtime_read_ahead = Counter(
            "harken_realtime_read_ahead",
            "Live finals started while the silence that may end an utterance went on, by "
            "outcome: used (the utterance ended), dropped (speech resumed).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self._scheduler: _SchedulerView | None = None
        self._engines: Callable[[], Mapping[str, Any]] = dict
        r.register(_LiveCollector(self))

    def watch_scheduler(self, scheduler: _SchedulerView) -> None:
        self._scheduler = scheduler

    def watch_engines(self, engines: Callable[[], Mapping[str, Any]]) -> None:
        """`engines()` gives the loaded transcribers by model name; those with a `batcher`
        report their batches."""
        self._engines = engines

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Reads the scheduler's and the batchers' current state at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        scheduler = self._metrics._scheduler
        if scheduler is not None:
            yield GaugeMetricFamily(
                "harken_queue_depth", "Admitted jobs waiting for a worker.", scheduler.waiting
            )
            yield GaugeMetricFamily(
                "harken_busy_workers", "Jobs being decoded now.", scheduler.running
            )
            yield GaugeMetricFamily(
                "harken_workers", "Jobs that can be decoded at once.", scheduler.max_active
            )
            yield GaugeMetricFamily(
                "harken_capacity", "Jobs running or waiting before 429.", scheduler.capacity
            )
        batches = HistogramMetricFamily(
            "harken_batch_size",
            "Windows per batched model call, by model and call kind.",
            labels=["model", "kind"],
        )
        busy = GaugeMetricFamily(
            "harken_engine_busy", "Batched model calls running now.", labels=["model"]
        )
        busy_seconds = CounterMetricFamily(
            "harken_engine_busy_seconds", "Time spent in batched model calls.", labels=["model"]
        )
        for name, transcriber in self._metrics._engines().items():
            batcher = getattr(transcriber, "batcher", None)
            if batcher is None:
                continue
            stats = batcher.stats
            for kind in ("encode", "generate"):
                sizes = {size: n for (k, size), n in stats.batches.items() if k == kind}
                buckets, total, cumulative = [], 0.0, 0
                for bound in BATCH_SIZE_BUCKETS:
                    cumulative = sum(n for size, n in sizes.items() if size <= bound)
                    buckets.append((str(bound), cumulative))
                count = sum(sizes.values())
                total = float(sum(size * n for size, n in sizes.items()))
                buckets.append(("+Inf", count))
                batches.add_metric([name, kind], buckets, total)
            busy.add_metric([name], stats.busy)
            busy_seconds.add_metric([name], stats.busy_seconds)
        yield batches
        yield busy
        yield busy_seconds
        yield from _upstream_metrics(self._metrics._engines())


def _upstream_metrics(engines: Mapping[str, Any]) -> Iterable[Metric]:
    """Calls to remote models (engine/upstream.py) per model and upstream host."""
    labels = ["model", "upstream"]
    calls = CounterMetricFamily(
        "harken_upstream_calls",
        "Calls to upstream models by outcome: the HTTP status, timeout or connection.",
        labels=[*labels, "outcome"],
    )
    latency = HistogramMetricFamily(
        "harken_upstream_call_duration_seconds", "Time of one upstream call.", labels=labels
    )
    retries = CounterMetricFamily(
        "harken_upstream_retries", "Upstream calls tried again.", labels=labels
    )
    failures = CounterMetricFamily(
        "harken_upstream_failures",
        "Upstream calls that failed for good, by kind: error, unavailable, timeout, rejected.",
        labels=[*labels, "kind"],
    )
    for name, transcriber in engines.items():
        stats = getattr(transcriber, "upstream_stats", None)
        if stats is None:
            continue
        key = [name, stats.host]
        for outcome, n in sorted(stats.calls.items()):
            calls.add_metric([*key, outcome], n)
        cumulative, buckets = 0, []
        for bound, n in zip(stats.latency_bounds, stats.latency_counts, strict=True):
            cumulative += n
            buckets.append((str(bound), cumulative))
        buckets.append(("+Inf", stats.latency_count))
        latency.add_metric(key, buckets, stats.latency_sum)
        retries.add_metric(key, stats.retries)
        for kind, n in sorted(stats.failures.items()):
            failures.add_metric([*key, kind], n)
    yield calls
    yield latency
    yield retries
    yield failures
