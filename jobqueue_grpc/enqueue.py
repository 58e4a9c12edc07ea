"""Enqueuer: groups concurrent Enqueue calls into shared transactions (group commit).

With synchronous_commit on, every commit waits for a WAL flush; one commit per RPC caps unary
enqueue at the disk's flush rate. Calls that arrive while a flush runs wait for the next one and go
in together, so a busy server makes few large transactions and an idle one adds no delay.

A job that a Lease stream on this replica is waiting for with nothing else to do is handed off:
inserted already leased to that stream and pushed to it after the commit (Dispatcher.hand_off),
without a claim in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from jobqueue_grpc import metrics
from jobqueue_grpc._aio import spawn
from jobqueue_grpc.domain.jobs import NewJob, NewJobs
from jobqueue_grpc.store import Row, Store
from jobqueue_grpc.store.jobs import BatchInserted

if TYPE_CHECKING:
    from jobqueue_grpc.dispatch.dispatcher import Dispatcher

log = logging.getLogger(__name__)

_Waiter = tuple[NewJob, "asyncio.Future[tuple[Row, bool]]"]


class Enqueuer:
    def __init__(
        self,
        store: Store,
        *,
        max_group: int = 500,
        concurrency: int = 2,
        on_commit: Callable[[Sequence[Row]], None] | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.store = store
        self.max_group = max_group
        self.on_commit = on_commit
        self.dispatcher = dispatcher  # hands new jobs to its waiting streams
        self._pending: list[_Waiter] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._running = 0
        self._concurrency = concurrency

    async def enqueue_batch(self, jobs: NewJobs) -> BatchInserted:
        """One transaction for `jobs` alone: EnqueueBatch's all-or-nothing."""
        out = await self.store.jobs.insert_batch(jobs)
        created, queues, kinds, n = out.created, jobs.queue, jobs.kind, len(jobs)
        # After the commit, and only jobs it created: the counter says what the database holds.
        if n and all(created) and queues.count(queues[0]) == n and kinds.count(kinds[0]) == n:
            metrics.enqueued(queues[0], kinds[0], n)  # the usual batch: one queue, one kind
        else:
            pairs = zip(queues, kinds, strict=True)
            counts = Counter(p for p, c in zip(pairs, created, strict=True) if c)
            for (queue, kind), k in counts.items():
                metrics.enqueued(queue, kind, k)
        # One row per (queue, state) the batch inserted into: all the wake-up needs to know.
        if self.on_commit is not None and out.groups:
            self.on_commit(out.groups)
        return out

    async def enqueue(self, job: NewJob) -> tuple[Row, bool]:
        fut: asyncio.Future[tuple[Row, bool]] = asyncio.get_running_loop().create_future()
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
                handoff = self.dispatcher.hand_off(jobs) if self.dispatcher else None
                try:
                    out = await self.store.jobs.insert(jobs, handoff.slots if handoff else None)
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
                        handoff.done([row for row, created in out if created])
                    except Exception:  # not pushed: those leases expire into the retry path
                        log.exception("could not push %d handed-off jobs", len(group))
                self._committed(out)
                for (_, fut), res in zip(group, out, strict=True):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._running -= 1

    def _committed(self, out: Sequence[tuple[Row, bool]]) -> None:
        created = [row for row, was_created in out if was_created]
        # After the commit, and only rows it created: the counter says what the database holds.
        for (queue, kind), n in Counter((r["queue"], r["kind"]) for r in created).items():
            metrics.enqueued(queue, kind, n)
        if self.on_commit is not None and created:
            self.on_commit(created)
