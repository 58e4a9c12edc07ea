"""DeadLetterService end to end: real PostgreSQL, real gRPC server, dead letters seeded with SQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2 as pb
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2_grpc as pb_grpc
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.store import Store
from tests.lease_helpers import RawWorker, enqueue, get_job
from tests.operators import T0, error_info, seed_dead_letter, seed_job
from tests.support import wait_until


@pytest.fixture
def dlq(channel: grpc.aio.Channel) -> pb_grpc.DeadLetterServiceStub:
    return pb_grpc.DeadLetterServiceStub(channel)


@pytest.fixture
def jobs(channel: grpc.aio.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


def ts(at: Any) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(at)
    return t


async def seed_many(db: asyncpg.Connection, n: int = 24) -> list[uuid.UUID]:
    """n dead letters over two queues and three kinds, one minute apart."""
    return [
        await seed_dead_letter(
            db,
            queue=("mail", "billing")[i % 2],
            kind=("send", "charge", "refund")[i % 3],
            failed_at=T0 + timedelta(minutes=i),
        )
        for i in range(n)
    ]


async def db_ids(db: asyncpg.Connection, where: str = "true", *args: Any) -> list[str]:
    rows = await db.fetch(
        f"SELECT job_id FROM jobqueue.dead_letters WHERE {where}"
        " ORDER BY failed_at DESC, job_id DESC",
        *args,
    )
    return [str(r["job_id"]) for r in rows]


async def list_all(
    dlq: pb_grpc.DeadLetterServiceStub, f: pb.DeadLetterFilter, page_size: int
) -> tuple[list[str], int]:
    ids: list[str] = []
    token, pages = "", 0
    while True:
        resp = await dlq.ListDeadLetters(
            pb.ListDeadLettersRequest(filter=f, page_size=page_size, page_token=token)
        )
        pages += 1
        assert len(resp.dead_letters) <= page_size
        ids += [d.job_id for d in resp.dead_letters]
        token = resp.next_page_token
        if not token:
            return ids, pages


# -- get ------------------------------------------------------------------------------------------
async def test_get_dead_letter_keeps_payload_attempts_and_every_error(
    dlq: pb_grpc.DeadLetterServiceStub, db: asyncpg.Connection
) -> None:
    job_id = await seed_dead_letter(db, queue="mail", kind="send", attempts=3)
    d = (await dlq.GetDeadLetter(pb.GetDeadLetterRequest(job_id=str(job_id)))).dead_letter
    assert (d.job_id, d.queue, d.kind, d.attempts, d.max_attempts, d.priority) == (
        str(job_id),
        "mail",
        "send",
        3,
        3,
        2,
    )
    assert dict(d.payload) == {"to": "a@example.com", "n": 3.0}
    assert [(e.attempt, e.message, e.source) for e in d.errors] == [
        (1, "boom 1", "worker"),
        (2, "boom 2", "worker"),
        (3, "boom 3", "worker"),
    ]
    assert dict(d.errors[1].details) == {"code": 2.0}
    assert d.last_error.message == "boom 3"
    assert d.failed_at.ToDatetime().replace(tzinfo=T0.tzinfo) == T0
    assert d.created_at.ToDatetime().replace(tzinfo=T0.tzinfo) == T0 - timedelta(minutes=5)


async def test_get_unknown_and_malformed_ids(dlq: pb_grpc.DeadLetterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await dlq.GetDeadLetter(pb.GetDeadLetterRequest(job_id=str(uuid.uuid4())))
    assert error_info(e.value) == (grpc.StatusCode.NOT_FOUND, "DEAD_LETTER_NOT_FOUND")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await dlq.GetDeadLetter(pb.GetDeadLetterRequest(job_id="nope"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- list -----------------------------------------------------------------------------------------
async def test_list_pages_agree_with_the_database(
    dlq: pb_grpc.DeadLetterServiceStub, db: asyncpg.Connection
) -> None:
    await seed_many(db, 24)
    ids, pages = await list_all(dlq, pb.DeadLetterFilter(), page_size=5)
    assert ids == await db_ids(db)
    assert pages == 5
    # Each filter alone and together: exactly the rows the database selects, in order.
    cases: list[tuple[pb.DeadLetterFilter, str, tuple[Any, ...]]] = [
        (pb.DeadLetterFilter(queue="mail"), "queue = $1", ("mail",)),
        (pb.DeadLetterFilter(kind="refund"), "kind = $1", ("refund",)),
        (
            pb.DeadLetterFilter(failed_before=ts(T0 + timedelta(minutes=10))),
            "failed_at < $1",
            (T0 + timedelta(minutes=10),),
        ),
        (
            pb.DeadLetterFilter(failed_after=ts(T0 + timedelta(minutes=10))),
            "failed_at >= $1",
            (T0 + timedelta(minutes=10),),
        ),
        (
            pb.DeadLetterFilter(
                queue="billing",
                kind="charge",
                failed_after=ts(T0 + timedelta(minutes=3)),
                failed_before=ts(T0 + timedelta(minutes=20)),
            ),
            "queue = $1 AND kind = $2 AND failed_at >= $3 AND failed_at < $4",
            ("billing", "charge", T0 + timedelta(minutes=3), T0 + timedelta(minutes=20)),
        ),
    ]
    for f, where, args in cases:
        want = await db_ids(db, where, *args)
        assert want, where
        got, _ = await list_all(dlq, f, page_size=3)
        assert got == want, where


async def test_list_rejects_a_token_from_other_filters_and_bad_names(
    dlq: pb_grpc.DeadLetterServiceStub, db: asyncpg.Connection
) -> None:
    await seed_many(db, 6)
    first = await dlq.ListDeadLetters(pb.ListDeadLettersRequest(page_size=2))
    assert first.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await dlq.ListDeadLetters(
            pb.ListDeadLettersRequest(
                filter=pb.DeadLetterFilter(queue="mail"), page_token=first.next_page_token
            )
        )
    assert error_info(e.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await dlq.ListDeadLetters(
            pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(queue="Bad Name"))
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await dlq.ListDeadLetters(pb.ListDeadLettersRequest(page_size=100_000))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- stats ----------------------------------------------------------------------------------------
async def test_stats_agree_with_the_rows(
    dlq: pb_grpc.DeadLetterServiceStub, db: asyncpg.Connection
) -> None:
    empty = await dlq.GetDeadLetterStats(pb.GetDeadLetterStatsRequest())
    assert empty.total == 0 and not empty.by_queue and not empty.HasField("oldest_failed_at")
    await seed_many(db, 17)
    for f, where, args in [
        (pb.DeadLetterFilter(), "true", ()),
        (pb.DeadLetterFilter(queue="mail"), "queue = $1", ("mail",)),
        (
            pb.DeadLetterFilter(failed_before=ts(T0 + timedelta(minutes=9))),
            "failed_at < $1",
            (T0 + timedelta(minutes=9),),
        ),
    ]:
        s = await dlq.GetDeadLetterStats(pb.GetDeadLetterStatsRequest(filter=f))
        total, oldest, newest = await db.fetchrow(
            f"SELECT count(*), min(failed_at), max(failed_at) FROM jobqueue.dead_letters"
            f" WHERE {where}",
            *args,
        )
        assert s.total == total
        assert s.oldest_failed_at == ts(oldest) and s.newest_failed_at == ts(newest)
        for col, got in (("queue", s.by_queue), ("kind", s.by_kind)):
            rows = await db.fetch(
                f"SELECT {col} AS name, count(*) AS n FROM jobqueue.dead_letters"
                f" WHERE {where} GROUP BY {col}",
                *args,
            )
            assert {c.name: c.count for c in got} == {r["name"]: r["n"] for r in rows}
            assert sum(c.count for c in got) == total


# -- requeue --------------------------------------------------------------------------------------
async def test_requeue_puts_the_job_back_with_fresh_attempts_and_wakes_dispatchers(
    dlq: pb_grpc.DeadLetterServiceStub,
    jobs: job_service_pb2_grpc.JobServiceStub,
    db: asyncpg.Connection,
) -> None:
    job_id = await seed_dead_letter(db, queue="mail", attempts=3)
    woke: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener("jobqueue_jobs", lambda *a: woke.put_nowait(a[3]))
    job = (await dlq.RequeueDeadLetter(pb.RequeueDeadLetterRequest(job_id=str(job_id)))).job
    assert job.id == str(job_id)
    assert (job.state, job.attempt, len(job.errors), job.queue) == (
        job_pb2.JOB_STATE_QUEUED,
        0,
        0,
        "mail",
    )
    assert not job.HasField("finished_at") and not job.cancel_requested
    assert await asyncio.wait_for(woke.get(), 10) == "mail"
    got = (await jobs.GetJob(job_service_pb2.GetJobRequest(id=str(job_id)))).job
    assert got.state == job_pb2.JOB_STATE_QUEUED and got.max_attempts == 3
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 0
    # No longer a dead letter: a second requeue, a get and a delete find nothing.
    for call, req in (
        (dlq.RequeueDeadLetter, pb.RequeueDeadLetterRequest(job_id=str(job_id))),
        (dlq.GetDeadLetter, pb.GetDeadLetterRequest(job_id=str(job_id))),
        (dlq.DeleteDeadLetter, pb.DeleteDeadLetterRequest(job_id=str(job_id))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(req)  # type: ignore[operator]
        assert error_info(e.value) == (grpc.StatusCode.NOT_FOUND, "DEAD_LETTER_NOT_FOUND")


async def test_requeue_recreates_a_pruned_job_row(
    dlq: pb_grpc.DeadLetterServiceStub, db: asyncpg.Connection
) -> None:
    job_id = await seed_dead_letter(db, job_row=False, kind="charge", payload={"x": 1})
    job = (await dlq.RequeueDeadLetter(pb.RequeueDeadLetterRequest(job_id=str(job_id)))).job
    assert (job.id, job.kind, dict(job.payload), job.state, job.priority) == (
        str(job_id),
        "charge",
        {"x": 1.0},
        job_pb2.JOB_STATE_QUEUED,
        2,
    )
    row = await db.fetchrow("SELECT state, attempt FROM jobqueue.jobs WHERE id = $1", job_id)
    assert tuple(row) == ("queued", 0)


async def test_requeue_of_a_pruned_row_drops_an_idempotency_key_taken_since(
    dlq: pb_grpc.DeadLetterServiceStub, db: asyncpg.Connection
) -> None:
    job_id = await seed_dead_letter(db, job_row=False, idempotency_key="order-7")
    other = await seed_job(db, idempotency_key="order-7")
    job = (await dlq.RequeueDeadLetter(pb.RequeueDeadLetterRequest(job_id=str(job_id)))).job
    assert job.idempotency_key == ""
    key = await db.fetchval("SELECT idempotency_key FROM jobqueue.jobs WHERE id = $1", other)
    assert key == "order-7"


async def test_bulk_requeue_dry_run_counts_what_the_real_call_does(
    dlq: pb_grpc.DeadLetterServiceStub, store: Store, db: asyncpg.Connection
) -> None:
    store.dead_letters.chunk = 4  # several chunks, one transaction each
    ids = await seed_many(db, 24)
    f = pb.DeadLetterFilter(queue="mail", failed_after=ts(T0 + timedelta(minutes=5)))
    want = await db_ids(db, "queue = 'mail' AND failed_at >= $1", T0 + timedelta(minutes=5))
    dry = await dlq.RequeueDeadLetters(pb.RequeueDeadLettersRequest(filter=f, dry_run=True))
    assert (dry.count, dry.dry_run) == (len(want), True)
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 24
    real = await dlq.RequeueDeadLetters(pb.RequeueDeadLettersRequest(filter=f))
    assert (real.count, real.dry_run) == (dry.count, False)
    assert await db_ids(db, "queue = 'mail' AND failed_at >= $1", T0 + timedelta(minutes=5)) == []
    states = await db.fetch("SELECT id, state, attempt FROM jobqueue.jobs WHERE id = ANY($1)", ids)
    requeued = {str(r["id"]) for r in states if (r["state"], r["attempt"]) == ("queued", 0)}
    assert requeued == set(want)
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 24 - len(want)


async def test_bulk_requeue_with_a_limit_takes_the_oldest_first(
    dlq: pb_grpc.DeadLetterServiceStub, store: Store, db: asyncpg.Connection
) -> None:
    store.dead_letters.chunk = 3
    await seed_many(db, 10)
    oldest = (await db_ids(db))[::-1][:7]
    dry = await dlq.RequeueDeadLetters(pb.RequeueDeadLettersRequest(dry_run=True, limit=7))
    real = await dlq.RequeueDeadLetters(pb.RequeueDeadLettersRequest(limit=7))
    assert dry.count == real.count == 7
    left = set(await db_ids(db))
    assert left.isdisjoint(oldest) and len(left) == 3
    rest = await dlq.RequeueDeadLetters(pb.RequeueDeadLettersRequest(limit=7))
    assert rest.count == 3
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await dlq.RequeueDeadLetters(pb.RequeueDeadLettersRequest(limit=-1))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- delete and purge -----------------------------------------------------------------------------
async def test_delete_removes_the_dead_letter_and_its_failed_job(
    dlq: pb_grpc.DeadLetterServiceStub, db: asyncpg.Connection
) -> None:
    job_id, keep = await seed_dead_letter(db), await seed_dead_letter(db)
    await dlq.DeleteDeadLetter(pb.DeleteDeadLetterRequest(job_id=str(job_id)))
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE id = $1", job_id) == 0
    assert await db_ids(db) == [str(keep)]
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE id = $1", keep) == 1
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await dlq.DeleteDeadLetter(pb.DeleteDeadLetterRequest(job_id=str(job_id)))
    assert error_info(e.value) == (grpc.StatusCode.NOT_FOUND, "DEAD_LETTER_NOT_FOUND")


async def test_purge_dry_run_counts_what_the_real_call_deletes(
    dlq: pb_grpc.DeadLetterServiceStub, store: Store, db: asyncpg.Connection
) -> None:
    store.dead_letters.chunk = 5
    await seed_many(db, 30)
    live = await seed_job(db, queue="mail", state="queued")
    cut = T0 + timedelta(minutes=17)
    f = pb.DeadLetterFilter(failed_before=ts(cut))
    want = await db_ids(db, "failed_at < $1", cut)
    dry = await dlq.PurgeDeadLetters(pb.PurgeDeadLettersRequest(filter=f, dry_run=True))
    assert (dry.count, dry.dry_run) == (len(want), True) and dry.count == 17
    real = await dlq.PurgeDeadLetters(pb.PurgeDeadLettersRequest(filter=f))
    assert (real.count, real.dry_run) == (17, False)
    assert await db_ids(db, "failed_at < $1", cut) == []
    assert len(await db_ids(db)) == 13
    # Their failed job rows went with them; nothing else did.
    gone = [uuid.UUID(i) for i in want]
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE id = ANY($1)", gone) == 0
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs") == 13 + 1
    assert await db.fetchval("SELECT state FROM jobqueue.jobs WHERE id = $1", live) == "queued"
    again = await dlq.PurgeDeadLetters(pb.PurgeDeadLettersRequest(filter=f))
    assert again.count == 0


# -- with a live worker ---------------------------------------------------------------------------
async def test_a_job_out_of_attempts_is_dead_lettered_requeued_and_then_succeeds(
    channel: grpc.aio.Channel, dlq: pb_grpc.DeadLetterServiceStub
) -> None:
    worker = await RawWorker(channel).open(queues=("mail",), max_in_flight=1)
    try:
        job_id = (await enqueue(channel, kind="send", queue="mail", max_attempts=1)).job.id
        leased = await worker.next_job()
        assert leased.job.id == job_id
        await worker.send(
            fail=w.LeaseFail(
                jobs=[
                    w.FailedJob(
                        job_id=job_id,
                        lease_token=leased.lease_token,
                        error=w.JobError(message="smtp down"),
                        failure_class=w.FAILURE_CLASS_RETRY,
                    )
                ]
            )
        )

        async def dead_lettered() -> bool:
            stats = await dlq.GetDeadLetterStats(pb.GetDeadLetterStatsRequest())
            return stats.total == 1

        await wait_until(dead_lettered, what="the failed job to reach the dead-letter queue")
        d = (await dlq.GetDeadLetter(pb.GetDeadLetterRequest(job_id=job_id))).dead_letter
        assert (d.queue, d.kind, d.attempts) == ("mail", "send", 1)
        assert [e.message for e in d.errors] == ["smtp down"]
        assert (await get_job(channel, job_id)).state == job_pb2.JOB_STATE_FAILED

        await dlq.RequeueDeadLetter(pb.RequeueDeadLetterRequest(job_id=job_id))
        again = await worker.next_job()
        assert again.job.id == job_id and again.job.attempt == 1 and not again.job.errors
        await worker.complete(again)

        async def succeeded() -> bool:
            return bool((await get_job(channel, job_id)).state == job_pb2.JOB_STATE_SUCCEEDED)

        await wait_until(succeeded, what="the requeued job to succeed")
        assert (await dlq.GetDeadLetterStats(pb.GetDeadLetterStatsRequest())).total == 0
    finally:
        worker.cancel()
