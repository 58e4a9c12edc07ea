"""JobService.CancelJobs against a real server: dry run counts, the filters of ListJobs (queue,
kind, state, created before), running jobs getting the cancel notice, chunks, and bad filters."""

from __future__ import annotations

import asyncpg
import grpc

from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2 as S
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.store import Store
from tests.lease_helpers import RawWorker, enqueue, job_in_state
from tests.test_job_service import fails


async def states(db: asyncpg.Connection, queue: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT state, count(*) AS n FROM jobqueue.jobs WHERE queue = $1 GROUP BY state", queue
    )
    return {r["state"]: r["n"] for r in rows}


async def test_cancel_jobs_dry_run_then_for_real(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    stub = jsg.JobServiceStub(channel)
    worker = await RawWorker(channel).open(queues=("bulk",), max_in_flight=1)
    running = (await enqueue(channel, "import", queue="bulk")).job
    leased = await worker.next_job()
    for _ in range(5):
        await enqueue(channel, "import", queue="bulk")
    await enqueue(channel, "export", queue="bulk")
    await enqueue(channel, "import", queue="elsewhere")
    done = (await enqueue(channel, "import", queue="bulk", idempotency_key="finished")).job
    await db.execute("UPDATE jobqueue.jobs SET state = 'succeeded' WHERE id = $1::uuid", done.id)

    dry = await stub.CancelJobs(js.CancelJobsRequest(queue="bulk", kind="import", dry_run=True))
    assert (dry.matched, dry.cancelled, dry.cancel_requested) == (6, 0, 0)
    assert await states(db, "bulk") == {"queued": 6, "running": 1, "succeeded": 1}

    out = await stub.CancelJobs(js.CancelJobsRequest(queue="bulk", kind="import"))
    assert (out.matched, out.cancelled, out.cancel_requested) == (6, 5, 1)
    assert await states(db, "bulk") == {"cancelled": 5, "queued": 1, "running": 1, "succeeded": 1}
    assert await states(db, "elsewhere") == {"queued": 1}

    # the running one got the notice, as CancelJob would send it
    notice = (await worker.next_of("cancel")).cancel
    assert notice.job_id == running.id
    await worker.cancelled(leased)
    await job_in_state(channel, running.id, S.JOB_STATE_CANCELLED)
    await worker.close()

    # asked again, nothing is left to do (the running one is not asked twice)
    again = await stub.CancelJobs(js.CancelJobsRequest(queue="bulk", kind="import"))
    assert again.matched == 0


async def test_state_and_created_before_filters(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    stub = jsg.JobServiceStub(channel)
    old = (await enqueue(channel, "x", queue="f")).job
    await db.execute(
        "UPDATE jobqueue.jobs SET created_at = now() - interval '2 days' WHERE id = $1::uuid",
        old.id,
    )
    later = js.EnqueueRequest(kind="x", queue="f")
    later.run_at.FromJsonString("2099-01-01T00:00:00Z")
    await jsg.JobServiceStub(channel).Enqueue(later)  # scheduled
    await enqueue(channel, "x", queue="f")  # queued, new
    cutoff = js.CancelJobsRequest(queue="f")
    cutoff.created_before.GetCurrentTime()
    cutoff.created_before.seconds -= 86_400
    cutoff.dry_run = True
    assert (await stub.CancelJobs(cutoff)).matched == 1
    listed = js.ListJobsRequest(queue="f", created_before=cutoff.created_before)
    assert [j.id for j in (await stub.ListJobs(listed)).jobs] == [old.id]
    by_state = js.CancelJobsRequest(queue="f", state=S.JOB_STATE_SCHEDULED)
    assert (await stub.CancelJobs(by_state)).cancelled == 1
    assert await states(db, "f") == {"queued": 2, "cancelled": 1}
    terminal = js.CancelJobsRequest(state=S.JOB_STATE_SUCCEEDED, dry_run=True)
    assert (await stub.CancelJobs(terminal)).matched == 0


async def test_cancel_jobs_works_in_chunks(store: Store, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO jobqueue.jobs (id, queue, kind, payload, state, max_attempts, lease_seconds)"
        " SELECT gen_random_uuid(), 'chunks', 'k', '{}', 'queued', 1, 30"
        " FROM generate_series(1, 25)"
    )
    out = await store.jobs.cancel_many(
        queue="chunks",
        kind=None,
        states=[JobState.QUEUED],
        created_before=None,
        dry_run=False,
        chunk=10,
    )
    assert (out.cancelled, out.by_queue_kind) == (25, {("chunks", "k"): 25})
    assert await states(db, "chunks") == {"cancelled": 25}


async def test_cancel_jobs_needs_a_filter_and_good_ones(channel: grpc.aio.Channel) -> None:
    stub = jsg.JobServiceStub(channel)
    err = await fails(stub.CancelJobs(js.CancelJobsRequest(dry_run=True)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    err = await fails(stub.CancelJobs(js.CancelJobsRequest(queue="Not A Queue")))
    assert "queue" in err.violations
    err = await fails(stub.CancelJobs(js.CancelJobsRequest(state=99)))  # type: ignore[arg-type]
    assert "state" in err.violations
