"""Retention: the pruner removes exactly what is past retention, in batches, and only that."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.engine.maintenance.pruner import Pruner
from jobqueue_grpc.store import Store
from tests.conftest import ServerFactory
from tests.conftest import test_settings as settings_for
from tests.operators import seed_dead_letter, seed_job
from tests.support import wait_until

HOUR = 3600.0


async def seed_world(db: asyncpg.Connection) -> dict[str, set[uuid.UUID]]:
    """Jobs in every state, finished at various ages; returns the ids by what should happen."""
    now = datetime.now(UTC)
    ids: dict[str, set[uuid.UUID]] = {"keep": set(), "prune": set()}

    async def add(state: str, age_hours: float | None, fate: str, **kw: Any) -> None:
        at = None if age_hours is None else now - timedelta(hours=age_hours)
        ids[fate].add(await seed_job(db, state=state, finished_at=at, **kw))

    # Retention: succeeded 1 h, cancelled 2 h, failed 3 h (set in the tests below).
    for _ in range(7):
        await add("succeeded", 1.5, "prune")
        await add("succeeded", 0.5, "keep")
    for _ in range(3):
        await add("cancelled", 2.5, "prune")
        await add("cancelled", 1.5, "keep")
        await add("failed", 3.5, "prune")
        await add("failed", 2.5, "keep")
    # Live jobs are never pruned, however old.
    for state in ("queued", "scheduled", "running", "retrying"):
        await add(state, 100, "keep")
    return ids


async def job_ids(db: asyncpg.Connection) -> set[uuid.UUID]:
    return {r["id"] for r in await db.fetch("SELECT id FROM jobqueue.jobs")}


async def test_prune_once_removes_exactly_what_is_past_retention(
    store: Store, db_url: str, db: asyncpg.Connection
) -> None:
    ids = await seed_world(db)
    settings = settings_for(
        db_url,
        retention_succeeded=HOUR,
        retention_cancelled=2 * HOUR,
        retention_failed=3 * HOUR,
        prune_batch_size=2,  # several batches per state
    )
    counts = await Pruner(store.retention, settings).prune_once()
    assert counts.jobs == {JobState.SUCCEEDED: 7, JobState.CANCELLED: 3, JobState.FAILED: 3}
    assert counts.dead_letters == 0
    assert await job_ids(db) == ids["keep"]
    again = await Pruner(store.retention, settings).prune_once()
    assert again.total == 0


async def test_zero_retention_keeps_for_ever(
    store: Store, db_url: str, db: asyncpg.Connection
) -> None:
    ids = await seed_world(db)
    settings = settings_for(
        db_url, retention_succeeded=HOUR, retention_cancelled=0, retention_failed=0
    )
    counts = await Pruner(store.retention, settings).prune_once()
    assert counts.jobs == {JobState.SUCCEEDED: 7}
    assert len(await job_ids(db)) == len(ids["keep"]) + 6


async def test_dead_letters_are_kept_by_default_and_pruned_by_their_own_retention(
    store: Store, db_url: str, db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    old = [await seed_dead_letter(db, failed_at=now - timedelta(days=40)) for _ in range(5)]
    new = [await seed_dead_letter(db, failed_at=now - timedelta(days=1)) for _ in range(2)]
    keep_rows = settings_for(db_url, retention_failed=0, prune_batch_size=2)
    assert (await Pruner(store.retention, keep_rows).prune_once()).total == 0
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 7
    # Failed job rows have their own retention; their dead letters stay (requeue still works).
    rows_only = settings_for(db_url, retention_failed=30 * 86400.0, prune_batch_size=2)
    counts = await Pruner(store.retention, rows_only).prune_once()
    assert (counts.jobs[JobState.FAILED], counts.dead_letters) == (5, 0)
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 7
    dl = settings_for(db_url, retention_failed=0, dead_letter_retention=30 * 86400.0)
    counts = await Pruner(store.retention, dl).prune_once()
    assert counts.dead_letters == 5
    left = {r["job_id"] for r in await db.fetch("SELECT job_id FROM jobqueue.dead_letters")}
    assert left == set(new)
    assert await job_ids(db) == set(new)
    assert not set(old) & await job_ids(db)


async def test_the_server_runs_the_pruner(
    make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    ids = await seed_world(db)
    await make_server(
        retention_succeeded=HOUR,
        retention_cancelled=2 * HOUR,
        retention_failed=3 * HOUR,
        prune_interval=0.05,
        prune_batch_size=3,
    )

    async def pruned() -> bool:
        return await job_ids(db) == ids["keep"]

    await wait_until(pruned, what="the server's pruner to remove expired jobs")
