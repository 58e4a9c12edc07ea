"""The lease statements' plans on a table whose statistics are stale, as a queue's always are.

The statistics here say the table is empty (analysed before any job went in); then 20,000 jobs
arrive. Through the store's connections (store.PLANNER_SETTINGS), a claim must read the queue's
index in order up to its limit and a settle must probe the primary key per outcome: never scan
or hash the whole table, never sort the whole backlog. These plans were seen in `make bench`
before the settings (see the README, "What the server's sessions set").
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from jobqueue_grpc.store import Store
from jobqueue_grpc.store.queries import q

JOBS = 20_000


async def _fill(db: asyncpg.Connection) -> None:
    await db.execute("ANALYZE jobqueue.jobs")  # statistics of an empty table
    await db.execute(
        """INSERT INTO jobqueue.jobs (id, queue, kind, payload, state, max_attempts, lease_seconds)
           SELECT gen_random_uuid(), 'plans', 'noop', '{}', 'queued', 5, 30
           FROM generate_series(1, $1)""",
        JOBS,
    )


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += _nodes(child)
    return out


async def _explain(conn: asyncpg.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    """The executed plan's nodes (EXPLAIN ANALYZE, in a transaction rolled back)."""
    tr = conn.transaction()
    await tr.start()
    try:
        text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    finally:
        await tr.rollback()
    return _nodes(json.loads(text)[0]["Plan"])


def _whole_table_reads(nodes: list[dict[str, Any]]) -> list[str]:
    bad = []
    for n in nodes:
        kind = n["Node Type"]
        if kind in ("Seq Scan", "Bitmap Heap Scan") and n.get("Relation Name") == "jobs":
            bad.append(f"{kind} on jobs ({n.get('Actual Rows')} rows)")
        if kind in ("Hash Join", "Merge Join"):
            bad.append(kind)
        if kind == "Sort" and n.get("Actual Rows", 0) > 1000:
            bad.append(f"Sort of {n['Actual Rows']} rows")
    return bad


async def test_claim_reads_the_queue_in_index_order(store: Store, db: asyncpg.Connection) -> None:
    await _fill(db)
    async with store.claim_pool.acquire() as conn:  # type: ignore[union-attr]
        nodes = await _explain(
            conn, q("claim_jobs"), ["plans"], None, [uuid.uuid4()] * 500, ["w"] * 500
        )
    assert _whole_table_reads(nodes) == []
    assert nodes[0]["Actual Rows"] == 500


async def test_claims_run_a_generic_plan_that_reads_the_queue_in_index_order(
    store: Store, db: asyncpg.Connection
) -> None:
    """The claim pool's sessions always run the prepared claim's generic plan (planned once,
    not per claim): it must read the queue's index in order too, whatever the statistics say."""
    await _fill(db)
    slots = "{" + ",".join([str(uuid.uuid4())] * 500) + "}"
    workers = "{" + ",".join(["w"] * 500) + "}"
    async with store.claim_pool.acquire() as conn:  # type: ignore[union-attr]
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        await conn.execute(
            f"PREPARE generic_claim(text[], text[], uuid[], text[]) AS {q('claim_jobs')}"
        )
        try:
            for analyse in (False, True):  # stale statistics (empty table), then current ones
                if analyse:
                    await db.execute("ANALYZE jobqueue.jobs")
                # one queue, any kind; and several queues with a kinds filter
                for queues, kinds in (("{plans}", "NULL"), ("{plans,other}", "'{noop,x}'")):
                    nodes = await _explain(
                        conn,
                        f"EXECUTE generic_claim('{queues}', {kinds}, '{slots}', '{workers}')",
                    )
                    assert _whole_table_reads(nodes) == []
                    assert nodes[0]["Actual Rows"] == 500
        finally:
            await conn.execute("DEALLOCATE generic_claim")


async def test_settling_probes_the_primary_key(store: Store, db: asyncpg.Connection) -> None:
    await _fill(db)
    rows = await store.leases.claim(["plans"], None, [(uuid.uuid4(), "w")] * 1000)
    ids, tokens = [r.id for r in rows], [r.lease_token for r in rows]
    async with store.pool.acquire() as conn:
        complete = await _explain(conn, q("complete_jobs"), ids, tokens, [None] * len(ids))
        extend = await _explain(conn, q("extend_leases"), ids, tokens, [None] * len(ids))
    for nodes in (complete, extend):
        assert _whole_table_reads(nodes) == []
        assert nodes[0]["Actual Rows"] == 1000


async def test_enqueue_inserts_run_their_generic_plan(store: Store) -> None:
    """Enqueue's group-committed insert is planned once per session, not per call (see
    pool.INSERT_SETTINGS): PostgreSQL would otherwise plan each one afresh, for ever."""
    from jobqueue_grpc.api import convert
    from jobqueue_grpc.domain.jobs import Limits
    from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js

    limits = Limits(payload_max_bytes=1 << 20, default_max_attempts=5, default_lease_seconds=30)
    assert store.insert_pool is not None
    async with store.insert_pool.acquire() as conn:
        for i in range(8):
            job = convert.new_job(js.EnqueueRequest(queue="plans", kind="noop"), "", limits)
            hand_off = [(uuid.uuid4(), "w")] if i % 2 else None
            await store.jobs._insert(conn, [job], hand_off)
        row = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%INSERT INTO jobqueue.jobs AS j%'"
            " AND statement NOT LIKE '%pg_prepared_statements%'"
        )
    assert row is not None
    assert (row["generic_plans"], row["custom_plans"]) == (8, 0)  # auto: (0, 8)
