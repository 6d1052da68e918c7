"""Prometheus metrics, named after what operators know from Triton.

Mean batch size = ``serve_inference_count_total / serve_execution_count_total``.
Runner busy time = ``rate(serve_runner_busy_seconds_total[1m])``: runner-seconds per second,
summed over every instance of every model stage (so above 1 with several instances). The busy
fraction is exported directly as ``serve_runner_busy_ratio`` (the busiest model stage, over the
last ``window_s`` seconds) and per stage as ``serve_stage_busy_ratio{stage}``.

One view of the pod: with several processes (the front ends and the accelerator process),
``PROMETHEUS_MULTIPROC_DIR`` is set before any of them imports prometheus-client, every process
writes its samples there, and a scrape of any front end sums counters and histograms over all
of them (prometheus-client's multiprocess mode). Each gauge says how its processes' values
combine (``multiprocess_mode``); gauges computed on demand (busy windows, queue depths) are
copied into their samples by :meth:`Metrics.refresh` once a second and at every scrape.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as _values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

if os.environ.get(MULTIPROC_ENV):
    # Every sample update asks the process id (a system call) to notice a fork; the service's
    # processes never fork after they start (workers are spawned), so it is asked once.
    _PID = os.getpid()
    _values.ValueClass = _values.MultiProcessValue(process_identifier=lambda: _PID)

# `_created` series double the output and no dashboard uses them.
disable_created_metrics()

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
STAGE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, with one write per bucket touched
    instead of two per amount: a batch's queue waits, at every batch of the accelerator
    process's event loop (in multiprocess mode each write goes to a memory-mapped file)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another prometheus-client
        for amount in amounts:
            histogram.observe(amount)
        return
    if not amounts:
        return
    counts: dict[int, int] = {}
    last = len(bounds)
    for amount in amounts:
        if amount != amount:  # NaN: no bucket, as observe() does (bisect would say the first)
            continue
        i = bisect.bisect_left(bounds, amount)  # the first bound >= amount
        if i < last:
            counts[i] = counts.get(i, 0) + 1
    for i, count in counts.items():
        buckets[i].inc(count)
    total.inc(sum(amounts))


class Tally:
    """A hot loop's metric writes, kept in plain numbers and written out together.

    In multiprocess mode (the pod) every counter increment, gauge set and histogram
    observation is a write to a memory-mapped file under a lock, a few microseconds each, and
    the accelerator process's batcher makes about fifteen per batch, a front end's dataplane
    about as many per request. Recorded here, they cost a dictionary update each, and reach the
    real metrics within ``interval_s`` of the first write not yet written, or sooner when the
    owner calls :meth:`flush`: :meth:`Metrics.refresh` and a scrape in this process do; a front
    end's dataplane does when it goes idle, before the answers that leave it idle go out; the
    accelerator process does when a front end about to scrape asks it (``FlushMetrics``). So a
    client that has its answer scrapes metrics that count it, and the values written are
    exactly those of the same writes made one by one. Only for the event loop's own thread:
    not thread-safe.
    """

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self._counts: dict[Any, float] = {}
        self._gauges: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def inc(self, counter: Any, amount: float = 1.0) -> None:
        """``counter.inc(amount)``, later."""
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self._counts[counter] = self._counts.get(counter, 0.0) + amount
        self._due()

    def set(self, gauge: Any, value: float) -> None:
        """``gauge.set(value)``, later: the last value set wins."""
        self._gauges[gauge] = value
        self._due()

    def observe(self, histogram: Any, amount: float) -> None:
        """``histogram.observe(amount)``, later."""
        self._observed.setdefault(histogram, []).append(amount)
        self._due()

    def observe_many(self, histogram: Any, amounts: Sequence[float]) -> None:
        """``histogram.observe(a)`` for each of ``amounts``, later."""
        self._observed.setdefault(histogram, []).extend(amounts)
        self._due()

    def _due(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # (a timer of a loop now gone)
            self._timer = loop.call_later(self.interval_s, self.flush)
            self._loop = loop

    def flush(self) -> None:
        """Write what was recorded since the last flush."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        gauges, self._gauges = self._gauges, {}
        observed, self._observed = self._observed, {}
        for counter, amount in counts.items():
            counter.inc(amount)
        for gauge, value in gauges.items():
            gauge.set(value)
        for histogram, amounts in observed.items():
            observe_many(histogram, amounts)


class BusyWindow:
    """Fraction of the last ``window_s`` seconds a stage's ``capacity`` instances spent working
    (1.0: every instance busy all the time).

    Kept as spans in the order they ended, with their summed length, so that :meth:`ratio`
    (each second, in the accelerator process) clips only the spans that straddle the window's
    start instead of summing the window's every span (tens of thousands at batches of one).
    """

    def __init__(self, capacity: int = 1, window_s: float = 10.0):
        self.window_s = window_s
        self.capacity = max(1, capacity)
        self._spans: deque[tuple[float, float]] = deque()
        self._total = 0.0  # the length of the spans in _spans
        self._longest = 0.0  # no span in _spans is longer
        self._lock = threading.Lock()
        self._open: dict[int, float] = {}  # spans begun and not yet ended, by token
        self._next = 0

    def begin(self) -> int:
        """A span starts now; pass the returned token to :meth:`end`."""
        with self._lock:
            self._next += 1
            self._open[self._next] = time.monotonic()
            return self._next

    def end(self, token: int) -> None:
        with self._lock:
            now = time.monotonic()  # under the lock: the spans stay in the order they ended
            started = self._open.pop(token, None)
            if started is not None:
                self._spans.append((started, now))
                self._total += now - started
                self._longest = max(self._longest, now - started)
            self._trim(now - self.window_s)

    def _trim(self, start: float) -> None:
        spans = self._spans
        while spans and spans[0][1] <= start:
            s, e = spans.popleft()
            self._total -= e - s
        if not spans:  # start the sums afresh, free of rounding
            self._total = self._longest = 0.0

    def ratio(self) -> float:
        now = time.monotonic()
        start = now - self.window_s
        with self._lock:
            self._trim(start)
            busy = self._total
            # Spans end in order, none longer than _longest: only those that end before
            # start + _longest can have begun before the window did.
            for s, e in self._spans:
                if e >= start + self._longest:
                    break
                if s < start:
                    busy -= start - s
            busy += sum(now - max(s, start) for s in self._open.values())
        return max(0.0, min(1.0, busy / (self.capacity * self.window_s)))


class WorkWindow:
    """Busy fraction of a stage with ``capacity`` parallel workers over the last ``window_s``:
    the work seconds reported with :meth:`add` divided by ``capacity * window_s``."""

    def __init__(self, capacity: int = 1, window_s: float = 10.0):
        self.capacity = max(1, capacity)
        self.window_s = window_s
        self._work: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._work.append((now, seconds))
            while self._work and self._work[0][0] < now - self.window_s:
                self._work.popleft()

    def ratio(self) -> float:
        start = time.monotonic() - self.window_s
        with self._lock:
            # Work that ended inside the window, clipped to the window's length.
            busy = sum(min(s, t - start) for t, s in self._work if t > start)
        return max(0.0, min(1.0, busy / (self.capacity * self.window_s)))


W = TypeVar("W", "BusyWindow", "WorkWindow")


class Metrics:
    """All metrics of one service instance, in their own registry (tests build many apps).

    Args:
        registry: where they register (single process); default: a fresh one.
        window_s: the window of the busy ratios.
        share: this process's share of a pod-wide ratio it computes alone (1 / the number of
            front-end processes, which each report their own decode and top-k busy fractions;
            the scrape sums them).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        window_s: float = 10.0,
        share: float = 1.0,
    ):
        self.registry = registry or CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.share = share
        self._watched: list[tuple[Any, Callable[[], float]]] = []
        self._hooks: list[Callable[[], None]] = []
        self._before_scrape: list[Callable[[], Awaitable[object]]] = []
        # This process's per-request and per-batch writes, written together (see Tally); a
        # refresh and a scrape write them out first.
        self.tally = Tally()
        r = self.registry
        # -- requests: HTTP (route: the path template) and gRPC (route: the method's name)
        self.request_success = Counter(
            "serve_request_success",
            "Requests answered 2xx (gRPC: OK).",
            ["route", "protocol"],
            registry=r,
        )
        self.request_failure = Counter(
            "serve_request_failure",
            "Requests that failed, by reason (error code).",
            ["route", "reason", "protocol"],
            registry=r,
        )
        self.request_duration = Histogram(
            "serve_request_duration_seconds",
            "End-to-end request latency by route and status code (gRPC: status name).",
            ["route", "status", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frontends = Gauge(
            "serve_frontend_processes",
            "HTTP front-end processes serving (each counts itself).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pending_requests = Gauge(
            "serve_pending_requests",
            "Requests being handled right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # -- per model (pipeline), as Triton's model statistics count them
        self.model_requests = Counter(
            "serve_model_requests",
            "Inference requests per pipeline by outcome (success, fail), every protocol.",
            ["pipeline", "outcome"],
            registry=r,
        )
        self.model_request_seconds = Counter(
            "serve_model_request_seconds",
            "Seconds those requests took, end to end in the dataplane.",
            ["pipeline", "outcome"],
            registry=r,
        )
        self.model_images = Counter(
            "serve_model_images", "Images answered per pipeline.", ["pipeline"], registry=r
        )
        self.model_phase_seconds = Counter(
            "serve_model_phase_seconds",
            "Seconds answered requests spent per phase (decode, queue, compute), summed over "
            "requests (each request: its slowest image).",
            ["pipeline", "phase"],
            registry=r,
        )
        self.model_last_inference = Gauge(
            "serve_model_last_inference_timestamp_seconds",
            "When the pipeline last answered a request (Unix time).",
            ["pipeline"],
            registry=r,
            multiprocess_mode="max",
        )
        # -- pipeline
        self.images_in_flight = Gauge(
            "serve_images_in_flight",
            "Images admitted into the pipeline and not yet answered (bounded by "
            "SERVE_MAX_QUEUE_IMAGES).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "serve_queue_depth",
            "Items waiting in front of a stage.",
            ["stage"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stage_busy = Gauge(
            "serve_stage_busy_ratio",
            "Fraction of the last window a stage spent working.",
            ["stage"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stage_seconds = Histogram(
            "serve_stage_duration_seconds",
            "Time per item (CPU stages) or per batch (model stages).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.preprocess_duration = Histogram(
            "serve_preprocess_duration_seconds",
            "Decode and resize time per image, in a front end (its event loop or decode thread).",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "serve_queue_duration_seconds",
            "Time an image waited in the batcher's queue before its batch started.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "serve_inference_duration_seconds",
            "Model execution time per batch (compute).",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.inference_count = Counter(
            "serve_inference_count", "Images inferred (not counting padding).", registry=r
        )
        self.execution_count = Counter(
            "serve_execution_count", "Model executions (batches).", registry=r
        )
        self.batch_size = Histogram(
            "serve_batch_size",
            "Images per executed batch, before padding.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.padded_slots = Counter(
            "serve_padded_slots", "Batch slots filled with padding to reach a bucket.", registry=r
        )
        self.runner_busy_seconds = Counter(
            "serve_runner_busy_seconds",
            "Seconds the model runners (all model stages, all instances) spent executing.",
            registry=r,
        )
        self.batch_assembly_seconds = Counter(
            "serve_batch_assembly_seconds",
            "Seconds spent assembling batches (copying items into the input buffer and, on an "
            "accelerator, sending it): `ahead` while the runner ran the batch before, `inline` "
            "while the runner waited for it.",
            ["when"],
            registry=r,
        )
        self.model_instances = Gauge(
            "serve_model_instances",
            "Runner instances of each model stage (SERVE_MODEL_INSTANCES, resolved).",
            ["stage"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.expired = Counter(
            "serve_expired_items",
            "Items dropped before the model because their deadline had passed.",
            registry=r,
        )
        self.worker_restarts = Counter(
            "serve_preprocess_pool_restarts",
            "Cpu-stage worker processes replaced after dying (the item one held is retried once).",
            registry=r,
        )
        self.accelerator_starts = Counter(
            "serve_accelerator_starts",
            "Starts of the accelerator process (the first one, then each restart).",
            registry=r,
        )
        # Counted by the replacement itself: the pod's first front ends start at slightly
        # different times, and a scrape between them would read as a restart.
        self.frontend_restarts = Counter(
            "serve_frontend_restarts",
            "Front-end processes started in place of one that died or whose event loop stalled.",
            registry=r,
        )
        self.ready = Gauge(
            "serve_ready",
            "1 when the service is ready for traffic (with several front ends: any of them).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.window_s = window_s
        self._stage_windows: dict[str, BusyWindow | WorkWindow] = {}
        # The default pipeline's model stage ("model"): read from the window its batcher records
        # into (looked up at each scrape: the batcher replaces it with one of its own capacity),
        # not a second tracker that every pipeline's batcher would share.
        self.stage_busy_window("model")
        self.runner_busy_ratio = Gauge(
            "serve_runner_busy_ratio",
            f"Fraction of the last {window_s:g} s the busiest model stage's runner instances "
            "were executing (1: all of them, all the time), of any pipeline.",
            registry=r,
            multiprocess_mode="livemax",
        )
        # The busiest, not the default pipeline's alone: with traffic on another pipeline
        # (SERVE_PIPELINE, or pipelines named per request) it would read 0 while runners work.
        self.watch(self.runner_busy_ratio, self._busiest_runner)
        # -- asynchronous jobs (service/jobs)
        self.jobs = Counter(
            "serve_jobs",
            "Asynchronous jobs by outcome: submitted, succeeded, failed, cancelled, claimed "
            "(taken over from a replica that stopped), callback_delivered, callback_failed.",
            ["event"],
            registry=r,
        )

    def _busiest_runner(self) -> float:
        windows = list(self._stage_windows.values())
        return max((w.ratio() for w in windows if isinstance(w, BusyWindow)), default=0.0)

    def stage_busy_window(self, stage: str, capacity: int = 1) -> BusyWindow:
        """The busy window of a model stage with ``capacity`` runner instances, exported as
        ``serve_stage_busy_ratio{stage}``."""
        return self._stage_window(stage, BusyWindow, capacity)

    def stage_work_window(self, stage: str, capacity: int = 1) -> WorkWindow:
        """The work window of a stage with ``capacity`` parallel workers (the process pool)."""
        return self._stage_window(stage, WorkWindow, capacity)

    def _stage_window(self, stage: str, kind: type[W], capacity: int) -> W:
        """The stage's window of this kind and capacity (a new one replaces any other)."""
        window = self._stage_windows.get(stage)
        if not isinstance(window, kind) or window.capacity != capacity:
            window = kind(capacity, self.window_s)
            self._stage_windows[stage] = window
            share = self.share
            self.watch(self.stage_busy.labels(stage), lambda: window.ratio() * share)
        return window

    # -- values computed on demand, and the scrape -----------------------------------------

    def watch(self, gauge: Any, value: Callable[[], float]) -> None:
        """``gauge`` shows ``value()``: at each scrape in one process, else after each refresh
        (a multiprocess scrape reads only what the processes have written)."""
        if not self.multiprocess:
            gauge.set_function(value)
            return
        self._watched = [(g, f) for g, f in self._watched if g is not gauge]
        self._watched.append((gauge, value))

    def before_scrape(self, hook: Callable[[], Awaitable[object]]) -> None:
        """Await ``hook()`` before each scrape (:meth:`settle`): another process writes what
        it has counted (the accelerator process, asked over the front end's channel)."""
        self._before_scrape.append(hook)

    async def settle(self) -> None:
        """Before a scrape: every ``before_scrape`` hook has run, so that the scrape counts
        everything answered before it began, whichever process counted it."""
        for hook in self._before_scrape:
            await hook()

    def on_refresh(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` at each refresh: it writes gauges of its own (GPU readings)."""
        self._hooks.append(hook)

    def refresh(self) -> None:
        """Write what the tally holds, and every watched value into its gauge (multiprocess
        mode)."""
        self.tally.flush()
        for gauge, value in self._watched:
            gauge.set(value())
        for hook in self._hooks:
            hook()

    def collect(self) -> Iterable[Metric]:
        """Every metric family of the pod (all processes summed), as a scrape would see it."""
        if not self.multiprocess:
            self.tally.flush()
            return self.registry.collect()
        self.refresh()
        return MultiProcessCollector(None).collect()

    def render(self) -> tuple[bytes, str]:
        """The scrape: this process's registry, or every process's samples summed."""
        if not self.multiprocess:
            self.tally.flush()
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        self.refresh()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
