"""Enqueuer: groups concurrent Enqueue calls into shared transactions (group commit).

With synchronous_commit on, every commit waits for a WAL flush; one commit per RPC caps unary
enqueue at the disk's flush rate. Calls that arrive while a flush runs wait for the next one and go
in together, so a busy server makes few large transactions and an idle one adds no delay.

A job that a Lease stream on this replica is waiting for with nothing else to do is handed off:
inserted already leased to that stream and pushed to it after the commit (engine/handoff.py),
without a claim in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable

from jobqueue_grpc import metrics
from jobqueue_grpc._aio import spawn
from jobqueue_grpc.domain.jobs import NewJob, NewJobs
from jobqueue_grpc.domain.records import BatchInserted, JobRecord
from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.engine.handoff import HandOffs
from jobqueue_grpc.engine.ports import JobPort
from jobqueue_grpc.store.notify import Commits

log = logging.getLogger(__name__)

_Waiter = tuple[NewJob, "asyncio.Future[tuple[JobRecord, bool]]"]


class Enqueuer:
    def __init__(
        self,
        jobs: JobPort,
        commits: Commits,
        handoffs: HandOffs | None = None,
        *,
        max_group: int = 500,
        concurrency: int = 2,
    ) -> None:
        self.jobs = jobs
        self.commits = commits  # every engine on the store hears what committed
        self.handoffs = handoffs  # new jobs for this replica's idle streams
        self.max_group = max_group
        self._pending: list[_Waiter] = []
        self._running = 0
        self._concurrency = concurrency

    async def enqueue_batch(self, jobs: NewJobs) -> BatchInserted:
        """One transaction for `jobs` alone: EnqueueBatch's all-or-nothing."""
        out = await self.jobs.insert_batch(jobs)
        created, queues, kinds, n = out.created, jobs.queue, jobs.kind, len(jobs)
        # After the commit, and only jobs it created: the counter says what the database holds.
        if n and all(created) and queues.count(queues[0]) == n and kinds.count(kinds[0]) == n:
            metrics.enqueued(queues[0], kinds[0], n)  # the usual batch: one queue, one kind
        else:
            pairs = zip(queues, kinds, strict=True)
            counts = Counter(p for p, c in zip(pairs, created, strict=True) if c)
            for (queue, kind), k in counts.items():
                metrics.enqueued(queue, kind, k)
        self._wake(state for _, state in out.counts)
        return out

    async def enqueue_unique(self, jobs: list[NewJob]) -> list[tuple[JobRecord, bool]]:
        """Jobs that may be unique (EnqueueRequest.unique), in one transaction of their own: no
        group commit and no hand-off (a duplicate must find the job it duplicates)."""
        out = await self.jobs.insert_unique(jobs)
        created = [row for row, was_created in out if was_created]
        for (queue, kind), n in Counter((r.queue, r.kind) for r in created).items():
            metrics.enqueued(queue, kind, n)
        self._wake(r.state for r in created)
        return out

    async def enqueue(self, job: NewJob) -> tuple[JobRecord, bool]:
        fut: asyncio.Future[tuple[JobRecord, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((job, fut))
        if self._running < self._concurrency:
            self._running += 1
            spawn(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                group, self._pending = (
                    self._pending[: self.max_group],
                    self._pending[self.max_group :],
                )
                jobs = [j for j, _ in group]
                handoff = self.handoffs.offer(jobs) if self.handoffs else None
                try:
                    out = await self.jobs.insert(jobs, handoff.slots if handoff else None)
                except BaseException as exc:
                    if handoff is not None:
                        handoff.failed()
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                if handoff is not None:
                    try:
                        handoff.done(out.leased)
                    except Exception:  # not pushed: those leases expire into the retry path
                        log.exception("could not push %d handed-off jobs", len(group))
                created = [row for row, was_created in out.jobs if was_created]
                # After the commit, and only rows it created: the counter says what the database
                # holds.
                for (queue, kind), n in Counter((r.queue, r.kind) for r in created).items():
                    metrics.enqueued(queue, kind, n)
                self._wake(r.state for r in created)
                for (_, fut), res in zip(group, out.jobs, strict=True):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._running -= 1

    def _wake(self, states: Iterable[str]) -> None:
        seen = set(states)
        if JobState.QUEUED in seen:
            self.commits.jobs_ready()
        if JobState.SCHEDULED in seen:  # it may now be due sooner than the scheduler planned
            self.commits.jobs_scheduled()
