"""The store: the only place SQL runs. One asyncpg pool, one class per area of the schema.

Statements come from `store/sql/*.sql` by name (see queries.py); nothing here builds SQL. Every
area returns the typed values of domain/records.py and raises domain errors (store/errors.py).
LISTEN/NOTIFY and the channel names are in notify.py; the pools' setup in pool.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg

from jobqueue_grpc.store import migrate as migrations
from jobqueue_grpc.store.dead_letters import DeadLetterStore
from jobqueue_grpc.store.errors import translated
from jobqueue_grpc.store.jobs import JobStore
from jobqueue_grpc.store.leases import LeaseStore
from jobqueue_grpc.store.limits import LimitStore
from jobqueue_grpc.store.notify import Commits, Listener, Peers
from jobqueue_grpc.store.pool import CLAIM_SETTINGS, INSERT_SETTINGS, connect_pool
from jobqueue_grpc.store.queries import q
from jobqueue_grpc.store.queues import QueueStore
from jobqueue_grpc.store.retention import RetentionStore
from jobqueue_grpc.store.schedules import ScheduleStore
from jobqueue_grpc.store.watch import WatchStore

__all__ = ["Store", "connect_pool"]


@translated
class Store:
    """Owns the pools; its areas (`jobs`, `leases`, `queues`, ...) run the statements."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        url: str = "",
        claim_pool: asyncpg.Pool | None = None,
        backends: set[int] | None = None,
        insert_pool: asyncpg.Pool | None = None,
    ) -> None:
        self.pool = pool
        self.claim_pool = claim_pool  # the engine's claims (pool.CLAIM_SETTINGS); else `pool`
        self.url = url  # for connections outside the pool (LISTEN)
        # Server PIDs of this store's connections: a NOTIFY from one of them was sent by this
        # process, which has woken its engines in-process already (`commits`). Never pruned:
        # should PostgreSQL reuse a PID of ours for another replica's session, that replica's
        # wake-ups would reach us only by the engine's periodic claim (a second at most).
        self.backends: set[int] = backends if backends is not None else set()
        # Every engine on this store hears of commits that made jobs claimable here.
        self.commits = Commits()
        # Whether another replica listens for wake-ups; each engine's Listener keeps it.
        self.peers = Peers()
        self.insert_pool = insert_pool  # Enqueue's inserts (pool.INSERT_SETTINGS); else `pool`
        self.jobs = JobStore(pool, self.peers, insert_pool)
        self.dead_letters = DeadLetterStore(pool, on_available=self.commits.jobs_ready)
        self.queues = QueueStore(pool, on_available=self.commits.jobs_ready)
        self.retention = RetentionStore(pool)
        self.schedules = ScheduleStore(pool, self.peers)
        self.leases = LeaseStore(pool, claim_pool or pool)
        self.limits = LimitStore(pool, claim_pool or pool)  # flow control
        self._page_token_key: bytes | None = None
        self.watch = WatchStore(pool)

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> Store:
        backends: set[int] = set()
        pool = await connect_pool(url, min_size=min_size, max_size=max_size, backends=backends)
        # connections made on first use (a store that never claims never opens one)
        claim_pool = await connect_pool(
            url, min_size=0, max_size=2, settings=CLAIM_SETTINGS, backends=backends
        )
        # as many as the Enqueuer's group commits that may run at once
        insert_pool = await connect_pool(
            url, min_size=0, max_size=2, settings=INSERT_SETTINGS, backends=backends
        )
        return cls(pool, url, claim_pool, backends, insert_pool)

    async def close(self) -> None:
        if self.claim_pool is not None:
            await self.claim_pool.close()
        if self.insert_pool is not None:
            await self.insert_pool.close()
        await self.pool.close()

    def listener(
        self,
        *,
        on_jobs: Callable[[str], None],
        on_cancel: Callable[[uuid.UUID, uuid.UUID], None],
        on_limits: Callable[[str], None] = lambda _queue: None,
        on_changes: Callable[[list[uuid.UUID] | None], None] = lambda _ids: None,
    ) -> Listener:
        """A LISTEN connection of its own (run it as a task) for wake-ups from other replicas,
        flow control changes, and job changes from every replica while this one has watchers."""
        return Listener(
            self.url,
            self.peers,
            self.backends,
            on_jobs=on_jobs,
            on_cancel=on_cancel,
            on_limits=on_limits,
            on_changes=on_changes,
        )

    async def migrate(self) -> list[int]:
        async with self.pool.acquire() as conn:
            return await migrations.migrate(conn)

    async def page_token_key(self) -> bytes:
        """The key page tokens are signed with, shared by every replica of the database. Read on
        first use (not at start-up, which would fail against a schema still to be migrated) and
        kept: it never changes."""
        key = self._page_token_key
        if key is None:
            key = self._page_token_key = bytes(await self.pool.fetchval(q("page_token_key")))
        return key

    async def schema_current(self) -> bool:
        """True when the database answers and every known migration is applied."""
        known = [version for version, _, _ in migrations.migration_files()]
        async with self.pool.acquire(timeout=2) as conn:
            missing = await conn.fetch(q("missing_migrations"), known, timeout=2)
        return not missing
