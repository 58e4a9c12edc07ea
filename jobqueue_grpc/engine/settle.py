"""Settling: outcomes from every stream, group-committed; leases that ended without one, released.

While one settle transaction runs, the next batch fills, so a busy replica makes few large
statements and an idle one adds no delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable

from jobqueue_grpc import metrics
from jobqueue_grpc._aio import spawn
from jobqueue_grpc.domain.errors import Unavailable
from jobqueue_grpc.domain.outcomes import Failure, LostBecause, RetryDefaults, lost
from jobqueue_grpc.domain.records import Ended, Settled
from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.engine.events import RejectCode
from jobqueue_grpc.engine.loops import report
from jobqueue_grpc.engine.ports import LeasePort
from jobqueue_grpc.engine.streams import Lease, Registry, Stream
from jobqueue_grpc.engine.wakeups import WakeBus

log = logging.getLogger(__name__)

RETRY_FIRST = 0.1  # seconds before settling a batch again while the database is away
RETRY_MAX = 2.0


def count_ended(rows: Iterable[Ended]) -> None:
    for r in rows:
        metrics.failed(r.queue, r.kind)
        if r.state == JobState.RETRYING:
            metrics.retried(r.queue, r.kind)
        elif r.state == JobState.FAILED:
            metrics.dead_lettered(r.queue, r.kind)
        elif r.state == JobState.CANCELLED:
            metrics.cancelled(r.queue, r.kind)


class Releaser:
    """Ends leases that ended without the worker's outcome as failed attempts (retry path)."""

    def __init__(self, leases: LeasePort, defaults: RetryDefaults) -> None:
        self.leases = leases
        self.defaults = defaults

    async def release(self, held: list[tuple[uuid.UUID, uuid.UUID]], because: LostBecause) -> None:
        """These (job id, lease token) leases end as failed attempts; stale ones are skipped."""
        rows = await self.leases.release(held, lambda a: lost(a, self.defaults, because))
        count_ended(rows)

    async def expire(self, limit: int) -> list[Ended]:
        """Up to `limit` expired leases, on any replica, end as failed attempts."""
        rows = await self.leases.expire(
            limit, lambda a: lost(a, self.defaults, LostBecause.EXPIRED)
        )
        count_ended(rows)
        return rows


class Settler:
    """Group-commits outcomes from every stream: while one transaction runs, the next fills."""

    def __init__(
        self, leases: LeasePort, registry: Registry, bus: WakeBus, concurrency: int = 2
    ) -> None:
        self.leases = leases
        self.registry = registry
        self.bus = bus
        self._completes: list[tuple[Stream, Lease, str | None]] = []
        self._cancels: list[tuple[Stream, Lease]] = []
        self._fails: list[tuple[Stream, Lease, Failure]] = []
        self._running = 0
        self._concurrency = concurrency
        self._idle = asyncio.Event()
        self._idle.set()
        self._refill = False  # a full stream got room back: see _release_slot
        self.stopped = False  # shutting down: outcomes the database refuses are not tried again

    def complete(self, s: Stream, lease: Lease, result: str | None) -> None:
        self._completes.append((s, lease, result))
        self._kick(s)

    def cancelled(self, s: Stream, lease: Lease) -> None:
        self._cancels.append((s, lease))
        self._kick(s)

    def fail(self, s: Stream, lease: Lease, f: Failure) -> None:
        self._fails.append((s, lease, f))
        self._kick(s)

    async def idle(self) -> None:
        """Returns once every outcome handed in so far is committed (or refused)."""
        while not self._idle.is_set():
            await self._idle.wait()

    def _kick(self, s: Stream) -> None:
        s.pending += 1
        s.settled.clear()
        self._idle.clear()
        if self._running < self._concurrency:
            self._running += 1
            spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self._completes or self._cancels or self._fails:
                completes, self._completes = self._completes, []
                cancels, self._cancels = self._cancels, []
                fails, self._fails = self._fails, []
                try:
                    done = await self._record(completes, cancels, fails)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Given up (a bug, or the database stayed away until the leases ran out):
                    # the stream lets go of all of them (else their slots were lost for good);
                    # any lease still current in the database expires into the retry path.
                    n = len(completes) + len(cancels) + len(fails)
                    report(log, f"could not record {n} outcomes", exc)
                    released = 0
                    for s, le in [(s, le) for s, le, _ in completes + fails] + cancels:
                        released += self._release_slot(s, le)
                        s.reject(le.id_str, RejectCode.UNRECORDED, "the server could not record it")
                        self._settled(s)
                    self._released(released)
                    continue
                now = time.monotonic()
                runs: dict[tuple[str, str], list[float]] = {}
                released = 0
                for s, le, _ in completes:
                    released += self._finish(s, le, le.job.id in done.completed, now, runs)
                for s, le in cancels:
                    released += self._finish(s, le, le.job.id in done.cancelled, now, runs)
                failed = {r.id for r in done.failed}
                for s, le, _ in fails:
                    released += self._finish(s, le, le.job.id in failed, now, runs)
                for s in [s for s, _, _ in completes + fails] + [s for s, _ in cancels]:
                    self._settled(s)
                for (queue, kind), seconds in runs.items():
                    metrics.observe_run(queue, kind, seconds)
                _count_by_kind(metrics.completed, (le for _, le, _ in completes), done.completed)
                _count_by_kind(metrics.cancelled, (le for _, le in cancels), done.cancelled)
                count_ended(done.failed)
                self._released(released)
        finally:
            self._running -= 1
            if self._running == 0 and not (self._completes or self._cancels or self._fails):
                self._idle.set()

    async def _record(
        self,
        completes: list[tuple[Stream, Lease, str | None]],
        cancels: list[tuple[Stream, Lease]],
        fails: list[tuple[Stream, Lease, Failure]],
    ) -> Settled:
        """Settles the batch; while the database is away, tries again (the stream keeps those
        slots) until it is back or the batch's first lease would have expired anyway. Each
        statement is fenced by the lease token, so a second try cannot apply an outcome twice; an
        outcome whose statement landed before the link broke comes back not taken (STALE)."""
        leases = [le for _, le, _ in completes] + [le for _, le in cancels]
        leases += [le for _, le, _ in fails]
        give_up = min(le.expires_at for le in leases)
        delay = RETRY_FIRST
        while True:
            try:
                return await self.leases.settle(
                    [(le.job.id, le.job.lease_token, res) for _, le, res in completes],
                    [(le.job.id, le.job.lease_token) for _, le in cancels],
                    [f for _, _, f in fails],
                )
            except Unavailable as exc:
                if self.stopped or time.time() + delay >= give_up:
                    raise
                log.warning(
                    "could not record %d outcomes yet (%s); trying again in %.1f s",
                    len(leases),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _settled(self, s: Stream) -> None:
        s.pending -= 1
        if s.pending <= 0:
            s.pending = 0
            s.settled.set()

    def _release_slot(self, s: Stream, le: Lease) -> int:
        """Frees the stream's slot of `le` (1), unless it went already (0); see _released."""
        if s.leases.get(le.id_str) is le:
            if s.capacity <= 0:
                # The stream was full, so a claim may have passed it by: claim again once this
                # batch is settled. (A stream with room got every job there was already; a job
                # enqueued since wakes the claim on its own.)
                self._refill = True
            del s.leases[le.id_str]
            return 1
        return 0

    def _released(self, n: int) -> None:
        """`n` slots were freed: count them once, and let the claim and drain loops know."""
        self.registry.released(n)
        if self._refill:
            self._refill = False
            self.bus.jobs_ready()

    def _finish(
        self,
        s: Stream,
        le: Lease,
        took: bool,
        now: float,
        runs: dict[tuple[str, str], list[float]],
    ) -> int:
        released = self._release_slot(s, le)
        if took:
            runs.setdefault((le.job.queue, le.job.kind), []).append(now - le.leased_at)
        else:
            s.reject(le.id_str, RejectCode.STALE, "the lease expired and the job moved on")
        return released


def _count_by_kind(
    count: Callable[[str, str, int], None], leases: Iterable[Lease], took: set[uuid.UUID]
) -> None:
    """Counts, once per queue and kind, the leases whose outcome took effect."""
    n: dict[tuple[str, str], int] = {}
    for le in leases:
        if le.job.id in took:
            key = (le.job.queue, le.job.kind)
            n[key] = n.get(key, 0) + 1
    for (queue, kind), k in n.items():
        count(queue, kind, k)
