"""The store: the only place SQL runs. One asyncpg pool, one class per area of the schema.

Statements come from `store/sql/*.sql` by name (see queries.py); nothing here builds SQL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from jobqueue_grpc.store import migrate as migrations
from jobqueue_grpc.store.dead_letters import DeadLetterStore
from jobqueue_grpc.store.jobs import JobStore
from jobqueue_grpc.store.leases import LeaseStore
from jobqueue_grpc.store.queries import q
from jobqueue_grpc.store.queues import QueueStore
from jobqueue_grpc.store.retention import RetentionStore
from jobqueue_grpc.store.types import LISTENER_APP, Peers, Row

log = logging.getLogger(__name__)

__all__ = ["Row", "Store", "connect_pool"]


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb crosses the wire as text: the api layer decodes it straight into protobuf Structs.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: v if isinstance(v, str) else json.dumps(v),
        decoder=lambda v: v,
        schema="pg_catalog",
        format="text",
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    """asyncpg's default reset runs a query on every release to the pool (one more round trip
    per statement we run). Our connections carry no session state to reset: no SET, no LISTEN
    (the dispatcher listens on its own connection), and the migration's advisory lock is
    released explicitly."""


# The planner sees a queue's table through statistics that are nearly always stale: the table
# grows from empty in seconds and its rows change state constantly. Trusting them, it has been
# seen to (measured at 200,000 jobs, in `make bench`):
# - hash a scan of the whole table to settle 1,000 outcomes (96 ms, against 11 ms probing the
#   primary key per outcome);
# - claim by bitmap-scanning every queued job of the queue and sorting them on disk (164 ms,
#   against 20 ms reading the jobs_queued index in order up to the limit).
# Every statement here reads a batch of at most a thousand rows by key or in index order, so
# the server's sessions rule those plans out.
PLANNER_SETTINGS = {"enable_hashjoin": "off", "enable_mergejoin": "off", "enable_bitmapscan": "off"}


# Claims commit without waiting for their WAL flush. A claim lost in a crash leaves its jobs
# queued, to be claimed again: what an expired lease does anyway, and a worker's outcome for the
# lost lease is refused (its token names nothing). Nothing durable can rest on a lost claim,
# since every outcome's own commit waits for the flush, which carries the claim before it. So a
# job reaches its worker one disk flush sooner. Every other write (enqueues, outcomes, cancels,
# expiry) waits for its flush as the server's synchronous_commit says.
#
# Claims also always run the generic plan of their prepared statement. PostgreSQL would plan each
# claim afresh for its parameters: 0.3-0.5 ms of planning (measured here) against a statement
# that itself runs in a few tenths of a millisecond when a job or two is waiting, which is most of
# the time from an enqueue's commit to its job leaving the server. The generic plan has the same
# shape (tests/test_lease_plans.py checks it): each queue's index read in order up to the limit.
CLAIM_SETTINGS = {"synchronous_commit": "off", "plan_cache_mode": "force_generic_plan"}


async def connect_pool(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    settings: dict[str, str] | None = None,
    backends: set[int] | None = None,
) -> asyncpg.Pool:
    """A pool of connections set up for the store; `backends` collects their server PIDs."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if backends is not None:
            backends.add(conn.get_server_pid())

    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=init,
        reset=_no_reset,
        server_settings={
            "application_name": "jobqueue-grpc",
            **PLANNER_SETTINGS,
            **(settings or {}),
        },
    )
    assert pool is not None
    return pool


class Store:
    """Owns the pool; `jobs` (and the other areas as they land) run the statements."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        url: str = "",
        claim_pool: asyncpg.Pool | None = None,
        backends: set[int] | None = None,
    ) -> None:
        self.pool = pool
        self.claim_pool = claim_pool  # the dispatcher's claims (CLAIM_SETTINGS); else `pool`
        self.url = url  # for connections outside the pool (LISTEN)
        # Server PIDs of this store's connections: a NOTIFY from one of them was sent by this
        # process, which has woken its dispatchers already (see on_jobs_available). Never pruned:
        # should PostgreSQL reuse a PID of ours for another replica's session, that replica's
        # wake-ups would reach us only by the dispatcher's periodic claim (a second at most).
        self.backends: set[int] = backends if backends is not None else set()
        # Called after commits that made jobs claimable: enqueues (with the rows inserted) and
        # others (a requeue, a resumed queue). The dispatchers using this store hook in here.
        self.on_enqueued: list[Callable[[Sequence[Row]], None]] = []
        self.on_jobs_available: list[Callable[[], None]] = []
        # Whether another replica listens for wake-ups; the dispatcher's LISTEN loop keeps it.
        self.peers = Peers()
        self.jobs = JobStore(pool, self.peers)
        self.dead_letters = DeadLetterStore(pool, on_available=self.jobs_available)
        self.queues = QueueStore(pool, on_available=self.jobs_available)
        self.retention = RetentionStore(pool)
        self.leases = LeaseStore(pool, claim_pool or pool)
        self._page_token_key: bytes | None = None

    def jobs_enqueued(self, rows: Sequence[Row]) -> None:
        """After an enqueue commits (the Enqueuer calls it)."""
        for hook in list(self.on_enqueued):
            hook(rows)

    def jobs_available(self) -> None:
        """After a commit that made jobs claimable other than by enqueueing them."""
        for hook in list(self.on_jobs_available):
            hook()

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> Store:
        backends: set[int] = set()
        pool = await connect_pool(url, min_size=min_size, max_size=max_size, backends=backends)
        # connections made on first use (a store that never claims never opens one)
        claim_pool = await connect_pool(
            url, min_size=0, max_size=2, settings=CLAIM_SETTINGS, backends=backends
        )
        return cls(pool, url, claim_pool, backends)

    async def close(self) -> None:
        if self.claim_pool is not None:
            await self.claim_pool.close()
        await self.pool.close()

    # -- the dispatcher's LISTEN connection (dispatch/dispatcher.py _listen_loop) -------------
    async def listener(self) -> asyncpg.Connection:
        """A connection of its own for LISTEN, named so that other replicas can count it."""
        return await asyncpg.connect(self.url, server_settings={"application_name": LISTENER_APP})

    async def announce_listener(self, conn: asyncpg.Connection) -> None:
        await conn.execute(q("announce_listener"))

    async def other_listeners(self, conn: asyncpg.Connection) -> int:
        """How many other replicas listen on this database (on the listener's own connection)."""
        return int(await conn.fetchval(q("other_listeners"), LISTENER_APP))

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
        async with self.pool.acquire(timeout=2) as conn:
            version: Any = await conn.fetchval(q("schema_version"), timeout=2)
        return int(version) >= migrations.latest_version()
