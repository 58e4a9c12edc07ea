"""The stream registry: every worker's Lease stream on this replica, its leases and its room.

Flow control lives here: a stream's `capacity` (max_in_flight less what it holds and what claims
have reserved for it), the groups of streams that want the same queues and kinds (one claim serves
a group), and the fair interleaving of their free slots.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from jobqueue_grpc import metrics
from jobqueue_grpc.domain.outcomes import Attempt
from jobqueue_grpc.domain.records import LeasedJob
from jobqueue_grpc.domain.validation import QUOTE_MAX
from jobqueue_grpc.engine import events as ev
from jobqueue_grpc.engine.wakeups import WakeBus, _set_event

EXPIRED_REMEMBERED = 1024  # per stream: expired leases whose late outcomes are answered STALE
OVERDUE_GRACE = 10.0  # seconds past expiry before a lease nobody reaped here is let go

Group = tuple[tuple[str, ...], tuple[str, ...] | None]  # (queues, kinds or None for any)


class Lease:
    """What the engine remembers of a job it has out on a stream."""

    __slots__ = ("expires_at", "id_str", "job", "leased_at", "token_str")

    def __init__(self, job: LeasedJob, leased_at: float) -> None:
        self.job = job
        self.id_str = str(job.id)  # job id and token as the wire carries them, made once
        self.token_str = str(job.lease_token)
        self.expires_at: float = job.lease_expires_at_s  # epoch s; refreshed by extensions
        self.leased_at = leased_at  # monotonic

    def attempt(self) -> Attempt:
        j = self.job
        return Attempt(
            j.id, j.lease_token, j.attempt, j.max_attempts, j.backoff_base, j.backoff_cap,
            j.last_sleep,
        )  # fmt: skip


@dataclass(eq=False)
class Stream:
    """One worker's Lease stream on this replica."""

    worker_id: str
    queues: tuple[str, ...]
    kinds: tuple[str, ...] | None
    max_in_flight: int
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    leases: dict[str, Lease] = field(default_factory=dict)  # by job id string
    reserved: int = 0  # slots asked for by claims and hand-offs still running
    outbox: asyncio.Queue[ev.Outgoing | None] = field(default_factory=asyncio.Queue)
    draining: bool = False
    closed: bool = False
    # Outcomes handed to the Settler and not yet committed or refused; `settled` is set at 0.
    pending: int = 0
    settled: asyncio.Event = field(default_factory=_set_event)
    # Leases that ended here without this stream's outcome (expired), so that a late outcome
    # is answered STALE rather than UNKNOWN; bounded, oldest dropped first.
    expired: dict[str, uuid.UUID] = field(default_factory=dict)
    # A lease expired here without a word from the worker (frozen, stuck loop, dead host with
    # the connection still up): it gets no new jobs until it sends anything, or each job it is
    # pushed would burn an attempt in turn.
    silent: bool = False

    def forget(self, job_id: str) -> Lease | None:
        """Drops the lease of `job_id` (it expired and moved on), remembering its token."""
        lease = self.leases.pop(job_id, None)
        if lease is not None:
            self.expired[job_id] = lease.job.lease_token
            if len(self.expired) > EXPIRED_REMEMBERED:
                del self.expired[next(iter(self.expired))]
        return lease

    @property
    def capacity(self) -> int:
        if self.draining or self.closed or self.silent:
            return 0
        return self.max_in_flight - len(self.leases) - self.reserved

    @property
    def group(self) -> Group:
        return self.queues, self.kinds

    def wants(self, queue: str, kind: str) -> bool:
        return queue in self.queues and (self.kinds is None or kind in self.kinds)

    def send(self, msg: ev.Outgoing) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def reject(self, job_id: str, code: ev.RejectCode, reason: str) -> None:
        # a job id is 36 characters: anything much longer is not ours and is not echoed whole
        self.send(ev.Rejected(job_id[:QUOTE_MAX], code, reason))

    def close(self) -> None:
        self.closed = True
        self.outbox.put_nowait(None)


class Registry:
    """The streams of this replica, by id."""

    def __init__(self, bus: WakeBus) -> None:
        self.bus = bus
        self.streams: dict[uuid.UUID, Stream] = {}
        bus.on_cancel = self.cancel_requested

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self.streams.values()))

    def __len__(self) -> int:
        return len(self.streams)

    def get(self, stream_id: uuid.UUID) -> Stream | None:
        return self.streams.get(stream_id)

    def add(self, s: Stream) -> None:
        self.streams[s.id] = s
        metrics.lease_streams(1)
        self.bus.jobs_ready()

    def remove(self, s: Stream) -> bool:
        """False when it was gone already."""
        if self.streams.pop(s.id, None) is None:
            return False
        metrics.lease_streams(-1)
        return True

    def holding(self) -> bool:
        return any(s.leases for s in self.streams.values())

    def groups(self) -> dict[Group, list[Stream]]:
        """Streams with room, by the queues and kinds they want."""
        out: dict[Group, list[Stream]] = {}
        for s in self.streams.values():
            if s.capacity > 0:
                out.setdefault(s.group, []).append(s)
        return out

    def has_group(self, group: Group) -> bool:
        return any(s.group == group for s in self.streams.values())

    def released(self, n: int) -> None:
        """`n` leases left their streams: count them once and tell the drain waits."""
        if n:
            metrics.jobs_in_flight(-n)
            self.bus.leases_released()

    def lost(self, s: Stream, job_id: str) -> None:
        """The database says this stream's lease is gone (expired and moved on)."""
        if s.forget(job_id) is not None:
            self.released(1)
            self.bus.jobs_ready()
        s.reject(job_id, ev.RejectCode.STALE, "the lease expired and the job moved on")

    def expired(self, job_ids: list[str]) -> None:
        """These leases were reaped: whichever stream here held them goes silent."""
        for job_id in job_ids:
            for s in self.streams.values():
                if s.forget(job_id) is not None:
                    s.silent = True
                    self.released(1)

    def forget_overdue(self) -> None:
        """Leases long past expiry that no reaper here saw end (another replica's reaper expired
        them, and the worker never spoke of them again): let go, or their slots stay lost."""
        cutoff = time.time() - OVERDUE_GRACE
        for s in self.streams.values():
            for le in [le for le in s.leases.values() if le.expires_at < cutoff]:
                if s.forget(le.id_str) is not None:
                    s.silent = True
                    self.released(1)

    def deliver(self, jobs: list[LeasedJob]) -> list[LeasedJob]:
        """Pushes leased jobs down their streams, one message per stream; returns the orphans
        (their stream closed while the claim ran), which the caller must release."""
        now = time.time()
        leased_at = time.monotonic()
        batches: dict[uuid.UUID, tuple[Stream, list[Lease]]] = {}
        waits: dict[tuple[str, str], list[float]] = {}
        orphans: list[LeasedJob] = []
        streams = self.streams
        for j in jobs:
            s = streams.get(j.stream_id)
            if s is None or s.closed:
                orphans.append(j)
                continue
            lease = Lease(j, leased_at)
            s.leases[lease.id_str] = lease
            batch = batches.get(s.id)
            if batch is None:
                batch = batches[s.id] = (s, [])
            batch[1].append(lease)
            waits.setdefault((j.queue, j.kind), []).append(now - j.run_at_s)
        for (queue, kind), seconds in waits.items():
            metrics.observe_wait(queue, kind, seconds)
        metrics.jobs_in_flight(len(jobs) - len(orphans))
        for s, leases in batches.values():
            s.send(ev.Delivered(leases))
        return orphans

    def cancel_requested(self, job_id: uuid.UUID, stream_id: uuid.UUID) -> None:
        s = self.streams.get(stream_id)
        key = str(job_id)
        if s is not None and key in s.leases:
            s.send(ev.CancelNotice(key))


def interleave(streams: list[Stream], limit: int) -> list[Stream]:
    """One slot per free place, round-robin across streams, so a short claim is shared fairly."""
    caps = {s.id: s.capacity for s in streams}
    out: list[Stream] = []
    while len(out) < limit and any(caps.values()):
        for s in streams:
            if caps[s.id] > 0 and len(out) < limit:
                out.append(s)
                caps[s.id] -= 1
    return out
