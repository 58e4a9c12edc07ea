"""The job store against a real PostgreSQL: idempotency, keyset listing, cancel by state."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from jobqueue_grpc.domain.errors import FailedPrecondition, NotFound
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.domain.records import JobRecord
from jobqueue_grpc.domain.states import CancelOutcome, JobState
from jobqueue_grpc.store import Store


def new_job(**overrides: Any) -> NewJob:
    fields: dict[str, Any] = {
        "queue": "default",
        "kind": "send_email",
        "payload_json": '{"to":"a@example.com"}',
        "priority": 0,
        "max_attempts": 5,
        "run_at": None,
        "idempotency_key": None,
        "lease_seconds": 30.0,
        "backoff_base": None,
        "backoff_cap": None,
    }
    fields.update(overrides)
    return NewJob(**fields)


async def count(db: asyncpg.Connection, where: str = "true", *args: Any) -> int:
    n = await db.fetchval(f"SELECT count(*) FROM jobqueue.jobs WHERE {where}", *args)
    return int(n)


# -- insert ---------------------------------------------------------------------------------------
async def test_insert_returns_rows_in_order_with_defaults(store: Store) -> None:
    jobs = [new_job(kind=f"k{i}", priority=i) for i in range(5)]
    out = (await store.jobs.insert(jobs)).jobs
    assert [row.id for row, _ in out] == [j.id for j in jobs]
    assert all(created for _, created in out)
    row = out[3][0]
    assert (row.kind, row.priority, row.state, row.attempt) == ("k3", 3, "queued", 0)
    assert row.payload == '{"to": "a@example.com"}'  # jsonb text, as convert.py expects
    assert row.run_at <= row.created_at + timedelta(seconds=1)


async def test_future_run_at_is_scheduled_and_past_is_queued(store: Store) -> None:
    now = datetime.now(UTC)
    out = (
        await store.jobs.insert(
            [new_job(run_at=now + timedelta(hours=1)), new_job(run_at=now - timedelta(hours=1))]
        )
    ).jobs
    assert [row.state for row, _ in out] == ["scheduled", "queued"]
    assert out[0][0].run_at == (now + timedelta(hours=1))


async def test_an_existing_idempotency_key_inserts_nothing(
    store: Store, db: asyncpg.Connection
) -> None:
    [(first, created)] = (await store.jobs.insert([new_job(idempotency_key="order-1")])).jobs
    assert created
    [(again, created_again)] = (
        await store.jobs.insert([new_job(idempotency_key="order-1", kind="other_kind", priority=9)])
    ).jobs
    assert not created_again
    assert again.id == first.id
    assert again.kind == "send_email"  # the original job, not the second request
    assert await count(db) == 1


async def test_a_key_repeated_inside_one_batch_inserts_its_first_job(
    store: Store, db: asyncpg.Connection
) -> None:
    jobs = [
        new_job(idempotency_key="dup", kind="first"),
        new_job(kind="plain"),
        new_job(idempotency_key="dup", kind="second"),
    ]
    out = (await store.jobs.insert(jobs)).jobs
    assert [created for _, created in out] == [True, True, False]
    assert out[2][0].id == out[0][0].id == jobs[0].id
    assert out[2][0].kind == "first"
    assert await count(db) == 2
    assert await count(db, "idempotency_key = 'dup'") == 1


async def test_a_batch_mixing_old_keys_and_new_jobs(store: Store, db: asyncpg.Connection) -> None:
    [(old, _)] = (await store.jobs.insert([new_job(idempotency_key="k-old")])).jobs
    out = (
        await store.jobs.insert(
            [new_job(idempotency_key="k-new"), new_job(idempotency_key="k-old")]
        )
    ).jobs
    assert [created for _, created in out] == [True, False]
    assert out[1][0].id == old.id
    assert await count(db) == 2


async def test_concurrent_inserts_with_one_key_make_one_job(
    store: Store, db: asyncpg.Connection
) -> None:
    results = await asyncio.gather(
        *(store.jobs.insert([new_job(idempotency_key="race")]) for _ in range(10))
    )
    flat = [pair for batch in results for pair in batch.jobs]
    assert sum(created for _, created in flat) == 1
    assert len({row.id for row, _ in flat}) == 1
    assert await count(db) == 1


async def test_insert_notifies_dispatchers_of_ready_queues(
    store: Store, db: asyncpg.Connection
) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener("jobqueue_jobs", lambda *args: got.put_nowait(args[3]))
    later = datetime.now(UTC) + timedelta(hours=1)
    await store.jobs.insert([new_job(queue="later", run_at=later), new_job(queue="now")])
    assert await asyncio.wait_for(got.get(), timeout=10) == "now"
    assert got.empty()  # a scheduled job wakes nobody


# -- get and list ---------------------------------------------------------------------------------
async def test_get_unknown_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        await store.jobs.get(uuid.uuid4())
    assert info.value.reason == "JOB_NOT_FOUND"


async def _fill(store: Store) -> list[uuid.UUID]:
    """Three transactions (three created_at values) of several jobs each."""
    ids: list[uuid.UUID] = []
    for n in (4, 1, 6):
        out = (
            await store.jobs.insert(
                [new_job(queue="q" + str(i % 2), kind="k" + str(i % 3)) for i in range(n)]
            )
        ).jobs
        ids.extend(row.id for row, _ in out)
    return ids


async def _all_pages(store: Store, limit: int, **filters: Any) -> list[list[JobRecord]]:
    pages: list[list[JobRecord]] = []
    after = None
    while True:
        rows = await store.jobs.list(
            queue=filters.get("queue"),
            kind=filters.get("kind"),
            state=filters.get("state"),
            after=after,
            limit=limit,
        )
        if not rows:
            return pages
        pages.append(rows)
        after = rows[-1].id


async def test_list_is_newest_first_and_pages_cover_every_job_once(store: Store) -> None:
    ids = await _fill(store)
    pages = await _all_pages(store, 3)
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    rows = [r for p in pages for r in p]
    assert sorted(r.id for r in rows) == sorted(ids)
    keys = [(r.created_at, r.id) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert len({r.created_at for r in rows}) == 3
    # newest first: the last transaction's jobs come before the first one's
    assert set(r.id for r in rows[:6]) == set(ids[5:])


async def test_list_filters(store: Store, db: asyncpg.Connection) -> None:
    await _fill(store)
    await db.execute("UPDATE jobqueue.jobs SET state = 'succeeded' WHERE kind = 'k1'")
    rows = [r for p in await _all_pages(store, 2, queue="q0") for r in p]
    assert len(rows) == await count(db, "queue = 'q0'") > 0
    assert {r.queue for r in rows} == {"q0"}
    rows = [r for p in await _all_pages(store, 100, kind="k2", queue="q1") for r in p]
    assert len(rows) == await count(db, "kind = 'k2' AND queue = 'q1'") > 0
    rows = [r for p in await _all_pages(store, 100, state=JobState.SUCCEEDED) for r in p]
    assert len(rows) == await count(db, "kind = 'k1'") > 0
    assert {r.state for r in rows} == {"succeeded"}
    assert await _all_pages(store, 100, queue="nope") == []


# -- cancel ---------------------------------------------------------------------------------------
async def _job_in(store: Store, db: asyncpg.Connection, state: str) -> uuid.UUID:
    [(row, _)] = (await store.jobs.insert([new_job()])).jobs
    await db.execute("UPDATE jobqueue.jobs SET state = $2 WHERE id = $1", row.id, state)
    return uuid.UUID(str(row.id))


@pytest.mark.parametrize("state", ["queued", "scheduled", "retrying"])
async def test_cancel_a_waiting_job_cancels_it_now(
    store: Store, db: asyncpg.Connection, state: str
) -> None:
    job_id = await _job_in(store, db, state)
    row, outcome = await store.jobs.cancel(job_id)
    assert outcome is CancelOutcome.CANCELLED
    assert row.state == "cancelled" and row.finished_at is not None
    stored = await db.fetchrow("SELECT state, finished_at FROM jobqueue.jobs WHERE id = $1", job_id)
    assert stored is not None and stored["state"] == "cancelled"
    assert stored["finished_at"] is not None


async def test_cancel_a_running_job_requests_it_and_tells_its_stream(
    store: Store, db: asyncpg.Connection
) -> None:
    job_id = await _job_in(store, db, "running")
    stream = uuid.uuid4()
    await db.execute("UPDATE jobqueue.jobs SET stream_id = $2 WHERE id = $1", job_id, stream)
    got: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener("jobqueue_cancel", lambda *args: got.put_nowait(args[3]))
    row, outcome = await store.jobs.cancel(job_id)
    assert outcome is CancelOutcome.CANCEL_REQUESTED
    assert (row.state, row.cancel_requested) == ("running", True)
    stored = await db.fetchrow(
        "SELECT state, cancel_requested FROM jobqueue.jobs WHERE id = $1", job_id
    )
    assert stored is not None
    assert (stored["state"], stored["cancel_requested"]) == ("running", True)
    assert await asyncio.wait_for(got.get(), timeout=10) == f"{job_id} {stream}"


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
async def test_cancel_a_terminal_job_is_refused_and_changes_nothing(
    store: Store, db: asyncpg.Connection, state: str
) -> None:
    job_id = await _job_in(store, db, state)
    before = await db.fetchrow("SELECT * FROM jobqueue.jobs WHERE id = $1", job_id)
    with pytest.raises(FailedPrecondition) as info:
        await store.jobs.cancel(job_id)
    assert info.value.reason == "JOB_TERMINAL"
    assert state.upper() in info.value.message
    assert await db.fetchrow("SELECT * FROM jobqueue.jobs WHERE id = $1", job_id) == before


async def test_cancel_unknown_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        await store.jobs.cancel(uuid.uuid4())
    assert info.value.reason == "JOB_NOT_FOUND"
