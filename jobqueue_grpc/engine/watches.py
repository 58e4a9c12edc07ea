"""Watchers of job changes (WatchJob, WatchJobs): who watches what, and the fan-out.

A change notice (store/notify.py: a NOTIFY from the jobs table's triggers, from any replica)
reaches the bus as `jobs_changed(ids)`, and `Watches.changed` marks each watcher of those ids.
A watcher keeps no copies of jobs, only the ids that changed since it last looked (a set, so
repeated changes coalesce) and one event; the api reads the jobs again and sends them. So a
watcher costs the same whether its jobs change once or a thousand times, and a slow client
holds no backlog: at most `pending_max` ids, past which it is told to list again (`resync`).

While this replica has at least one watcher its Listener keeps a row in job_watchers, without
which no replica NOTIFYs changes at all. Bounded per connection (`per_connection`, reason
TOO_MANY_WATCHES) and in all (`total`).

A statement whose trigger looked for watchers just before this replica's row appeared, and that
commits just after the watcher's first read, goes unannounced: the window is the time between a
statement's end and its commit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Protocol

from jobqueue_grpc._aio import wait
from jobqueue_grpc.domain.errors import ResourceExhausted, Unavailable

READY_TIMEOUT = 5.0  # seconds to wait for the Listener to put this replica's row in place


class WatchSwitch(Protocol):
    """What the watches need of the Listener (store/notify.py)."""

    watching: asyncio.Event

    def watch(self, on: bool) -> None: ...


class Watcher:
    __slots__ = ("_changed", "closed", "everything", "ids", "peer", "pending", "pending_max")

    def __init__(self, peer: str, ids: frozenset[uuid.UUID] | None, pending_max: int) -> None:
        self.peer = peer
        self.ids = ids  # None: every job (WatchJobs)
        self.pending: set[uuid.UUID] = set()
        self.pending_max = pending_max
        self.everything = False  # anything may have changed: read again / list again
        self.closed = False
        self._changed = asyncio.Event()

    def mark(self, ids: Iterable[uuid.UUID] | None) -> None:
        if ids is None:
            self.everything = True
            self.pending.clear()
        elif not self.everything:
            self.pending.update(ids)
            if len(self.pending) > self.pending_max:
                self.everything = True
                self.pending.clear()
        self._changed.set()

    async def next(self) -> tuple[set[uuid.UUID], bool]:
        """Waits for a change: (the ids that changed, whether anything may have changed)."""
        await self._changed.wait()
        if self.closed:
            raise Unavailable(
                "the server is shutting down; watch again elsewhere", reason="DRAINING"
            )
        self._changed.clear()
        ids, self.pending = self.pending, set()
        everything, self.everything = self.everything, False
        return ids, everything

    def close(self) -> None:
        self.closed = True
        self._changed.set()


class Watches:
    def __init__(self, switch: WatchSwitch, *, per_connection: int, total: int) -> None:
        self.switch = switch
        self.per_connection = per_connection
        self.total = total
        self.pending_max = 1000
        self.by_job: dict[uuid.UUID, set[Watcher]] = {}
        self.wide: set[Watcher] = set()  # watchers of every job
        self.per_peer: Counter[str] = Counter()
        self.count = 0
        self.closed = False

    @asynccontextmanager
    async def watch(self, peer: str, ids: frozenset[uuid.UUID] | None) -> AsyncIterator[Watcher]:
        """A registered watcher of `ids` (None: every job), once change notices flow."""
        if self.closed:
            raise Unavailable(
                "the server is shutting down; watch again elsewhere", reason="DRAINING"
            )
        if self.per_peer[peer] >= self.per_connection:
            raise ResourceExhausted(
                f"this connection already holds {self.per_connection} watches",
                reason="TOO_MANY_WATCHES",
            )
        if self.count >= self.total:
            raise ResourceExhausted(
                f"this server already holds {self.total} watches; try another replica",
                reason="TOO_MANY_WATCHES",
            )
        w = Watcher(peer, ids, self.pending_max)
        self._add(w)
        try:
            if not await wait(self.switch.watching.wait(), READY_TIMEOUT):
                raise Unavailable(
                    "job change notices are not reaching this server (database link down)",
                    reason="WATCH_UNAVAILABLE",
                )
            yield w
        finally:
            self._remove(w)

    def _add(self, w: Watcher) -> None:
        self.count += 1
        self.per_peer[w.peer] += 1
        if w.ids is None:
            self.wide.add(w)
        else:
            for i in w.ids:
                self.by_job.setdefault(i, set()).add(w)
        if self.count == 1:
            self.switch.watch(True)

    def _remove(self, w: Watcher) -> None:
        self.count -= 1
        self.per_peer[w.peer] -= 1
        if self.per_peer[w.peer] <= 0:
            del self.per_peer[w.peer]
        if w.ids is None:
            self.wide.discard(w)
        else:
            for i in w.ids:
                ws = self.by_job.get(i)
                if ws is not None:
                    ws.discard(w)
                    if not ws:
                        del self.by_job[i]
        if self.count == 0:
            self.switch.watch(False)

    def changed(self, ids: list[uuid.UUID] | None) -> None:
        """The bus's `jobs_changed`: these jobs changed (None: any job may have)."""
        if ids is None:
            for ws in self.by_job.values():
                for w in ws:
                    w.mark(None)
            for w in self.wide:
                w.mark(None)
            return
        for i in ids:
            for w in self.by_job.get(i, ()):
                w.mark((i,))
        for w in self.wide:
            w.mark(ids)

    def close(self) -> None:
        """Shutdown: every watch ends (UNAVAILABLE, DRAINING) and no new one starts."""
        self.closed = True
        for ws in self.by_job.values():
            for w in ws:
                w.close()
        for w in self.wide:
            w.close()
