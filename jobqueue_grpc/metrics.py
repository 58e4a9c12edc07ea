"""Prometheus metrics. Call sites count what the database committed, after the commit.

The functions below are the whole API the rest of the server uses; labels are bounded by the
queues and kinds that exist (both validated names).

No counter exports a `*_created` series: they double the series count and nothing here reads
them (prometheus_client's default; disabled at import, for the whole process).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import HistogramMetricFamily, Metric

disable_created_metrics()  # type: ignore[no-untyped-call]

_QK = ["queue", "kind"]
_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

JOBS_ENQUEUED = Counter("jobqueue_jobs_enqueued_total", "Jobs enqueued (committed).", _QK)
JOBS_COMPLETED = Counter("jobqueue_jobs_completed_total", "Jobs that succeeded.", _QK)
# Counts attempts, not jobs (a job retried three times fails three attempts), hence the name;
# `failed()` keeps its name for the call sites.
JOBS_FAILED = Counter(
    "jobqueue_attempts_failed_total",
    "Failed attempts (worker failure, lease expiry, stream closed).",
    _QK,
)
JOBS_RETRIED = Counter("jobqueue_jobs_retried_total", "Failed attempts scheduled to retry.", _QK)
JOBS_DEAD_LETTERED = Counter(
    "jobqueue_jobs_dead_lettered_total", "Jobs moved to the dead-letter queue.", _QK
)
JOBS_CANCELLED = Counter("jobqueue_jobs_cancelled_total", "Jobs cancelled.", _QK)
TICKS_FIRED = Counter(
    "jobqueue_schedule_ticks_fired_total", "Schedule ticks that enqueued their job.", ["schedule"]
)
TICKS_MISSED = Counter(
    "jobqueue_schedule_ticks_missed_total",
    "Schedule ticks not run: later than schedule_misfire_grace and left out by the policy.",
    ["schedule"],
)
LEASE_STREAMS = Gauge("jobqueue_lease_streams", "Open Lease streams on this server.")
JOBS_IN_FLIGHT = Gauge("jobqueue_jobs_in_flight", "Jobs leased on this server's streams.")


class BatchHistogram:
    """A histogram by (queue, kind) that takes a batch of values at a time, for the lease path:
    prometheus_client's Histogram takes a lock and walks its buckets in Python for every value,
    several microseconds a job. Exported in the same format (_bucket, _sum, _count)."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._les = (*(repr(b) for b in self._bounds), "+Inf")  # as Histogram writes them
        # (queue, kind) -> count per bucket (the last is +Inf), then the sum of the values
        self._series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        REGISTRY.register(self)

    def observe(self, queue: str, kind: str, values: Iterable[float]) -> None:
        series = self._series.get((queue, kind))
        if series is None:
            series = self._series[(queue, kind)] = ([0] * len(self._les), [0.0])
        counts, total = series
        bounds = self._bounds
        for v in values:
            if v < 0.0:
                v = 0.0
            counts[bisect_left(bounds, v)] += 1
            total[0] += v

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=_QK)
        for (queue, kind), (counts, total) in list(self._series.items()):
            cumulative, buckets = 0, []
            for le, n in zip(self._les, counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric([queue, kind], buckets, total[0])
        yield family


WAIT_SECONDS = BatchHistogram(
    "jobqueue_job_wait_seconds", "From enqueue (or run_at) to lease.", _BUCKETS
)
RUN_SECONDS = BatchHistogram("jobqueue_job_run_seconds", "From lease to outcome.", _BUCKETS)


_children: dict[tuple[int, str, str], Any] = {}
# Every queue the queue gauges have reported, or this server counted jobs of, since start: one
# that empties reads 0, never vanishes (a vanished series reads as a scrape failure and breaks
# alerts on it).
_known_queues: set[str] = set()


def _child(metric: Counter | Histogram, queue: str, kind: str) -> Any:
    """metric.labels(queue, kind), cached: labels() costs microseconds on the hot path."""
    key = (id(metric), queue, kind)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(queue, kind)
        _known_queues.add(queue)  # a queue with jobs on this server: its gauges read 0 at 0
    return child


def enqueued(queue: str, kind: str, n: int = 1) -> None:
    _child(JOBS_ENQUEUED, queue, kind).inc(n)


def completed(queue: str, kind: str, n: int = 1) -> None:
    _child(JOBS_COMPLETED, queue, kind).inc(n)


def failed(queue: str, kind: str, n: int = 1) -> None:
    _child(JOBS_FAILED, queue, kind).inc(n)


def retried(queue: str, kind: str, n: int = 1) -> None:
    _child(JOBS_RETRIED, queue, kind).inc(n)


def dead_lettered(queue: str, kind: str, n: int = 1) -> None:
    _child(JOBS_DEAD_LETTERED, queue, kind).inc(n)


def cancelled(queue: str, kind: str, n: int = 1) -> None:
    _child(JOBS_CANCELLED, queue, kind).inc(n)


def ticks_fired(schedule: str, n: int = 1) -> None:
    TICKS_FIRED.labels(schedule).inc(n)


def ticks_missed(schedule: str, n: int = 1) -> None:
    TICKS_MISSED.labels(schedule).inc(n)


def lease_streams(delta: int) -> None:
    LEASE_STREAMS.inc(delta)


def jobs_in_flight(delta: int) -> None:
    JOBS_IN_FLIGHT.inc(delta)


def observe_wait(queue: str, kind: str, seconds: Iterable[float]) -> None:
    """Wait times (enqueue or run_at to lease) of a batch of jobs of one queue and kind."""
    WAIT_SECONDS.observe(queue, kind, seconds)


def observe_run(queue: str, kind: str, seconds: Iterable[float]) -> None:
    """Run times (lease to outcome) of a batch of jobs of one queue and kind."""
    RUN_SECONDS.observe(queue, kind, seconds)


# -- RPCs and queue depth (the hardening issue) -------------------------------------------------
RPCS = Counter(
    "jobqueue_rpcs_total", "RPCs handled, by method and status code.", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "jobqueue_rpc_duration_seconds",
    "RPC handling time (streams: their lifetime).",
    ["method"],
    buckets=_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "jobqueue_queue_depth",
    "Jobs in each queue by state, read from the database at scrape.",
    ["queue", "state"],
)
DEAD_LETTERS = Gauge(
    "jobqueue_dead_letters",
    "Jobs in the dead-letter queue, read from the database at scrape.",
    ["queue"],
)


def rpc_handled(method: str, code: str, seconds: float) -> None:
    RPCS.labels(method, code).inc()
    RPC_SECONDS.labels(method).observe(max(0.0, seconds))


UNFINISHED_STATES = ("queued", "scheduled", "running", "retrying")


def set_queue_depth(
    depth: Iterable[tuple[str, str, int]],
    dead: Iterable[tuple[str, int]],
    named: Iterable[str] = (),
) -> None:
    """Replaces the gauges with the database's counts: every state of every known queue (those
    with unfinished jobs, dead letters or a settings row now, and those seen before), 0 where
    the database counted nothing."""
    depth, dead = list(depth), list(dead)
    known = _known_queues
    known.update(q for q, _, _ in depth)
    known.update(q for q, _ in dead)
    known.update(named)
    counts = {(q, s): n for q, s, n in depth}
    QUEUE_DEPTH.clear()
    for queue in sorted(known):
        for state in UNFINISHED_STATES:
            QUEUE_DEPTH.labels(queue, state).set(counts.get((queue, state), 0))
    dead_counts = dict(dead)
    DEAD_LETTERS.clear()
    for queue in sorted(known):
        DEAD_LETTERS.labels(queue).set(dead_counts.get(queue, 0))


# -- flow control (issue 14) --------------------------------------------------------------------
JOBS_HELD = Counter(
    "jobqueue_jobs_held_back_total",
    "Free worker slots a queue's flow-control limit kept from taking a job, by queue and limit "
    "('concurrency_key limit', 'queue limit', 'rate limit').",
    ["queue", "reason"],
)


def held_back(queue: str, held: dict[str, int]) -> None:
    for reason, n in held.items():
        if n > 0:
            JOBS_HELD.labels(queue, reason).inc(n)
