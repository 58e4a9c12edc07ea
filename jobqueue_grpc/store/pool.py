"""The driver's side of the store: asyncpg pools set up for the statements in sql/."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection, whether taken straight or from the pool.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.Connection


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
    (the Listener has a connection of its own), and the migration's advisory lock is released
    explicitly."""


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

# The group-committed Enqueue insert (jobs.sql insert_jobs) always runs its generic plan too. With
# parameters, PostgreSQL knows the arrays hold a job or two and finds a custom plan cheaper than
# the generic one (which assumes a hundred), so it never settles on the generic plan and plans
# every insert afresh: 0.3-0.4 ms (measured here) of a single Enqueue's ~1 ms in the database,
# on the path from a producer's call to its job's worker. The plan's shape is the same either
# way (tests/test_lease_plans.py). Commits still wait for their flush.
INSERT_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


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
