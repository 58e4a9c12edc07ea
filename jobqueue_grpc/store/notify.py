"""LISTEN/NOTIFY, and the in-process signals of commits that made jobs claimable.

Every channel name is here; the SQL statements that NOTIFY name them through placeholders
(store/queries.py). Payloads: jobs, the queue name; cancel, "<job id> <stream id>"; replicas,
empty; limits, the queue name; changes, the ids of the jobs that changed, separated by spaces.

Two ways a commit wakes dispatch:
- in this process, `Commits`: every engine on the store hears it at once (their listeners ignore
  NOTIFYs sent by this store's own connections, see `Store.backends`);
- on other replicas, NOTIFY, heard by their `Listener`. An enqueue notifies only while another
  replica listens (`Peers`).

Job changes (WatchJob/WatchJobs) go the other way round: triggers on the jobs table
(migrations/0050_job_watch.sql) NOTIFY CHANGES_CHANNEL from whichever replica changed a job, but
only while some replica has a watcher, which its Listener says with a row in job_watchers
(`Listener.watch`). Every replica's Listener hears every change, its own included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from jobqueue_grpc._aio import wait, within

log = logging.getLogger(__name__)

JOBS_CHANNEL = "jobqueue_jobs"  # jobs became claimable in a queue
CANCEL_CHANNEL = "jobqueue_cancel"  # a running job's cancel was requested
REPLICAS_CHANNEL = "jobqueue_replicas"  # a replica started listening
LIMITS_CHANNEL = "jobqueue_limits"  # a queue's flow control changed (payload: the queue)
# jobs changed (state, attempt, progress, result, cancel request); written literally in the
# trigger of migrations/0050_job_watch.sql, which a migration cannot take as a placeholder
CHANGES_CHANNEL = "jobqueue_job_changes"
# The placeholders by which store/sql/*.sql names them ('{jobs_channel}', ...).
CHANNELS = {
    "jobs_channel": JOBS_CHANNEL,
    "cancel_channel": CANCEL_CHANNEL,
    "replicas_channel": REPLICAS_CHANNEL,
    "limits_channel": LIMITS_CHANNEL,
    "changes_channel": CHANGES_CHANNEL,
}

# The application_name of a replica's LISTEN connection: how replicas find one another.
LISTENER_APP = "jobqueue-grpc-listener"
RECOUNT_EVERY = 1.0  # seconds between counts of the other listeners
LISTENER_TIMEOUT = 5.0  # seconds for the listener's own queries; past it, it reconnects


@dataclass(slots=True)
class Peers:
    """Whether another replica listens on this database.

    An enqueue NOTIFYs only when one does (this replica wakes its own engines in-process). A
    NOTIFY is not free: its commit takes PostgreSQL's notification queue lock and wakes every
    listening session, whose process then reads and ignores its own echo, all while the new job
    is on its way to a worker. The Listener keeps this up to date. While it does not know, it is
    True: a wake-up nobody needed costs a little CPU, a missing one costs another replica up to a
    second of latency.
    """

    listening: bool = True


@dataclass(slots=True)
class Commits:
    """In-process fan-out of commits that changed what dispatch should do."""

    ready: list[Callable[[], None]] = field(default_factory=list)  # claimable jobs now
    scheduled: list[Callable[[], None]] = field(default_factory=list)  # parked, maybe due sooner

    def jobs_ready(self) -> None:
        for hook in list(self.ready):
            hook()

    def jobs_scheduled(self) -> None:
        for hook in list(self.scheduled):
            hook()


class Listener:
    """One replica's LISTEN connection: wake-ups from other replicas, and who else listens.

    A replica that starts listening says so on REPLICAS_CHANNEL (the others start notifying at
    once); every RECOUNT_EVERY the count of other listeners is read again, which notices replicas
    that went away. Reconnects when the link drops; while it is down, `peers.listening` is True.
    """

    def __init__(
        self,
        url: str,
        peers: Peers,
        own_backends: set[int],
        *,
        on_jobs: Callable[[str], None],
        on_cancel: Callable[[uuid.UUID, uuid.UUID], None],
        on_limits: Callable[[str], None] = lambda _queue: None,
        on_changes: Callable[[list[uuid.UUID] | None], None] = lambda _ids: None,
    ) -> None:
        self.url = url
        self.on_limits = on_limits
        self.peers = peers
        self.own_backends = own_backends  # NOTIFYs from these were heard in-process already
        self.on_jobs = on_jobs
        self.on_cancel = on_cancel
        # Job ids that changed; None: anything may have changed unheard (the link was down).
        self.on_changes = on_changes
        self._watch = False  # wanted: this replica has watchers (a row in job_watchers)
        self.watching = asyncio.Event()  # set while the row is in place and we LISTEN
        self._row = False  # our row is in job_watchers (on the current connection)
        self._lost = False  # the link dropped while watching: tell watchers once it is back
        self._watch_changed = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._announcements = 0  # other replicas heard starting to listen
        self._stopped = False

    async def run(self) -> None:
        while not self._stopped:
            try:
                conn = self._conn = await asyncpg.connect(
                    self.url, server_settings={"application_name": LISTENER_APP}
                )
                await conn.add_listener(JOBS_CHANNEL, self._heard_jobs)
                await conn.add_listener(CANCEL_CHANNEL, self._heard_cancel)
                await conn.add_listener(REPLICAS_CHANNEL, self._heard_replica)
                await conn.add_listener(LIMITS_CHANNEL, self._heard_limits)
                self._row = False
                await conn.add_listener(CHANGES_CHANNEL, self._heard_changes)
                await conn.execute(_q("announce_listener"))
                await within(conn.execute(_q("prune_watchers")), LISTENER_TIMEOUT)
                while not conn.is_closed():
                    self._watch_changed.clear()  # before syncing: a later watch() wakes us
                    await self._sync_watch(conn)
                    announced = self._announcements
                    others = await within(self._other_listeners(conn), LISTENER_TIMEOUT)
                    # an announcement heard while counting is newer than the count
                    self.peers.listening = others > 0 or self._announcements != announced
                    await wait(self._watch_changed.wait(), RECOUNT_EVERY)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
                await asyncio.sleep(1.0)
            finally:
                self.peers.listening = True  # unknown while not listening: tell everyone
                if self.watching.is_set():
                    self.watching.clear()
                    self._lost = True
                    self.on_changes(None)  # changes may go unheard until we are back
                await self._close()

    def watch(self, on: bool) -> None:
        """Whether this replica has watchers: the loop adds or removes its job_watchers row
        (`watching` is set once the row is in place)."""
        if on != self._watch:
            self._watch = on
            if not on:
                self.watching.clear()
            self._watch_changed.set()

    async def _sync_watch(self, conn: asyncpg.Connection) -> None:
        if self._watch and not self._row:
            await within(conn.execute(_q("add_watcher")), LISTENER_TIMEOUT)
            self._row = True
        elif not self._watch and self._row:
            await within(conn.execute(_q("remove_watcher")), LISTENER_TIMEOUT)
            self._row = False
        if self._watch and self._row and not self.watching.is_set():
            self.watching.set()
            if self._lost:  # watchers from before the link dropped may have missed changes
                self._lost = False
                self.on_changes(None)

    async def stop(self) -> None:
        self._stopped = True
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    @staticmethod
    async def _other_listeners(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval(_q("other_listeners"), LISTENER_APP))

    def _heard_jobs(self, _conn: object, pid: int, _channel: str, payload: object) -> None:
        if pid not in self.own_backends:  # else sent by this process, which woke its engines
            self.on_jobs(str(payload))

    def _heard_cancel(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        job_id, _, stream_id = str(payload).partition(" ")
        with contextlib.suppress(ValueError):
            self.on_cancel(uuid.UUID(job_id), uuid.UUID(stream_id))

    def _heard_limits(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.on_limits(str(payload))  # this process's own too: its other engines must hear it

    def _heard_changes(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        ids = []
        for text in str(payload).split():
            with contextlib.suppress(ValueError):
                ids.append(uuid.UUID(text))
        if ids:
            self.on_changes(ids)

    def _heard_replica(self, _conn: object, pid: int, _channel: str, _payload: object) -> None:
        own = self._conn.get_server_pid() if self._conn is not None else None
        if pid not in self.own_backends and pid != own:
            self._announcements += 1
            self.peers.listening = True  # another replica started listening


def _q(name: str) -> str:
    from jobqueue_grpc.store.queries import q  # queries imports this module's channel names

    return q(name)
