"""The hand-off: a job enqueued while a stream here waits with nothing to claim is inserted
already leased to that stream and pushed after the commit, skipping the claim (Temporal's "sync
match").

Only streams whose group's last claim came back short since the last wake-up qualify, so nothing
older is waiting for them; several new jobs go in the claim's order. The slots stay reserved until
`HandOff.done` or `failed`, and a drain waits for them as for a claim round.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from jobqueue_grpc._aio import spawn
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.domain.records import LeasedJob
from jobqueue_grpc.engine.claims import Claimer
from jobqueue_grpc.engine.flow import FlowControl
from jobqueue_grpc.engine.ports import LeasePort
from jobqueue_grpc.engine.streams import Registry, Stream
from jobqueue_grpc.engine.wakeups import WakeBus
from jobqueue_grpc.store.notify import Commits

log = logging.getLogger(__name__)


class HandOff:
    """Stream slots reserved for new jobs while their insert runs."""

    __slots__ = ("_ended", "_hands", "ids", "streams")

    def __init__(self, hands: HandOffs, ids: list[uuid.UUID], streams: list[Stream | None]) -> None:
        self._hands = hands
        self.ids = ids  # the jobs' ids
        self.streams = streams  # per job: the stream it may go to, or None
        self._ended = False

    @property
    def slots(self) -> list[tuple[uuid.UUID, str] | None]:
        return [(s.id, s.worker_id) if s is not None else None for s in self.streams]

    def done(self, leased: list[LeasedJob]) -> None:
        """After the insert committed: `leased` are the jobs it leased (a paused queue's or a
        job whose idempotency key was known were not); they are pushed to their streams."""
        self._end()
        if leased:
            self._hands.claimer.deliver(leased)

    def failed(self) -> None:
        """The insert raised. It may still have committed (a later statement failed, or the
        connection dropped after the commit): any job it leased is put back in the queue, since
        it was never pushed. Should that fail too, the lease expires into the retry path."""
        self._end()
        handed = [(i, s.id) for i, s in zip(self.ids, self.streams, strict=True) if s is not None]
        spawn(self._hands.unlease(handed))

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        for s in self.streams:
            if s is not None:
                s.reserved -= 1
        self._hands.claimer.ends()


class HandOffs:
    def __init__(
        self,
        leases: LeasePort,
        registry: Registry,
        bus: WakeBus,
        claimer: Claimer,
        commits: Commits,
        flow: FlowControl | None = None,
    ) -> None:
        self.leases = leases
        self.flow = flow  # a job of a queue with limits is never handed off: the claim counts it
        self.registry = registry
        self.bus = bus
        self.claimer = claimer
        self.commits = commits  # jobs put back wake every engine on the store

    def _idle_streams(self) -> list[Stream]:
        drained, current = self.claimer.drained, self.bus.generation
        return [s for s in self.registry if drained.get(s.group) == current and s.capacity > 0]

    def waiting(self, queue: str, kind: str) -> bool:
        """A stream here has room for such a job and nothing known to claim: one enqueued now
        would be handed off to it."""
        if self.flow is not None and self.flow.is_limited(queue):
            return False
        return any(s.wants(queue, kind) for s in self._idle_streams())

    def offer(self, jobs: Sequence[NewJob]) -> HandOff | None:
        """Slots on idle streams for those of `jobs` they take, or None."""
        if self.claimer.paused or not self.claimer.drained:
            return None
        streams = self._idle_streams()
        if not streams:
            return None
        now = datetime.now(UTC)
        slots: list[Stream | None] = [None] * len(jobs)
        # the claim's order: priority, run_at (now when not given), id (UUIDv7: enqueue order)
        order = sorted(
            range(len(jobs)), key=lambda i: (jobs[i].priority, jobs[i].run_at or now, jobs[i].id)
        )
        for i in order:
            j = jobs[i]
            if j.run_at is not None and j.run_at > now:
                continue
            if self.flow is not None and self.flow.is_limited(j.queue):
                continue
            best: Stream | None = None
            for s in streams:
                if (
                    s.wants(j.queue, j.kind)
                    and s.capacity > 0
                    and (best is None or s.capacity > best.capacity)
                ):
                    best = s
            if best is not None:
                best.reserved += 1
                slots[i] = best
        if not any(slots):
            return None
        self.claimer.begins()  # a drain waits for these jobs to be pushed, as for a claim
        return HandOff(self, [j.id for j in jobs], slots)

    async def unlease(self, handed: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        try:
            if await self.leases.unlease_handed_off(handed):
                self.commits.jobs_ready()
        except Exception:
            log.warning("could not put back %d handed-off jobs", len(handed), exc_info=True)
