"""EnqueueRequest.unique against real servers: by key (given or derived), by state, by period,
in batches, and 20 concurrent enqueues across two replicas (each with its own Store) making one
job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2 as dl
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2_grpc as dl_grpc
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from tests import conftest
from tests.lease_helpers import RawWorker, duration, job_in_state
from tests.test_job_service import fails

UNFINISHED = [
    job_pb2.JOB_STATE_QUEUED,
    job_pb2.JOB_STATE_SCHEDULED,
    job_pb2.JOB_STATE_RUNNING,
    job_pb2.JOB_STATE_RETRYING,
]


def req(kind: str = "report", **unique: Any) -> js.EnqueueRequest:
    return js.EnqueueRequest(
        queue="u", kind=kind, payload={"day": "2026-12-01"}, unique=js.UniqueOptions(**unique)
    )


async def test_unique_by_key_refuses_a_duplicate_until_the_job_finishes(
    channel: grpc.aio.Channel,
) -> None:
    stub = jsg.JobServiceStub(channel)
    first = await stub.Enqueue(req(key="nightly-report"))
    again = await stub.Enqueue(req(kind="other", key="nightly-report"))
    assert first.created and not again.created
    assert again.job.id == first.job.id and again.job.unique_key == "nightly-report"

    worker = await RawWorker(channel).open(queues=("u",))
    try:
        leased = await worker.next_job()
        assert (await stub.Enqueue(req(key="nightly-report"))).job.id == first.job.id  # running
        await worker.complete(leased)
        await worker.sync()
    finally:
        worker.cancel()
    # finished: not one of the default (unfinished) states, so a new job may come
    later = await stub.Enqueue(req(key="nightly-report"))
    assert later.created and later.job.id != first.job.id


async def test_a_derived_key_is_queue_kind_and_payload(channel: grpc.aio.Channel) -> None:
    stub = jsg.JobServiceStub(channel)
    a = await stub.Enqueue(req())
    b = await stub.Enqueue(req())
    other = await stub.Enqueue(
        js.EnqueueRequest(
            queue="u", kind="report", payload={"day": "2026-12-02"}, unique=js.UniqueOptions()
        )
    )
    assert a.created and not b.created and b.job.id == a.job.id and other.created
    assert a.job.unique_key.startswith("derived:")


async def test_unique_by_state_refuses_duplicates_of_finished_jobs_too(
    channel: grpc.aio.Channel,
) -> None:
    stub = jsg.JobServiceStub(channel)
    states = [*UNFINISHED, job_pb2.JOB_STATE_SUCCEEDED]
    first = await stub.Enqueue(req(key="once", states=states))
    worker = await RawWorker(channel).open(queues=("u",))
    try:
        await worker.complete(await worker.next_job())
        await worker.sync()
    finally:
        worker.cancel()
    again = await stub.Enqueue(req(key="once", states=states))
    assert not again.created and again.job.id == first.job.id
    assert again.job.state == job_pb2.JOB_STATE_SUCCEEDED
    # a cancelled job is not in those states: the key is free again after a cancel
    c1 = await stub.Enqueue(req(key="c", states=states))
    await stub.CancelJob(js.CancelJobRequest(id=c1.job.id))
    assert (await stub.Enqueue(req(key="c", states=states))).created

    err = await fails(stub.Enqueue(req(key="x", states=[job_pb2.JOB_STATE_QUEUED])))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "unique.states" in err.violations


async def test_unique_by_period_is_one_job_per_window(channel: grpc.aio.Channel) -> None:
    stub = jsg.JobServiceStub(channel)
    hour = duration(3600)
    a = req(key="hourly", period=hour)
    a.run_at.FromJsonString("2030-01-01T10:05:00Z")
    b = req(key="hourly", period=hour)
    b.run_at.FromJsonString("2030-01-01T10:55:00Z")  # the same hour
    c = req(key="hourly", period=hour)
    c.run_at.FromJsonString("2030-01-01T11:00:00Z")  # the next one
    ra, rb, rc = [await stub.Enqueue(r) for r in (a, b, c)]
    assert ra.created and not rb.created and rb.job.id == ra.job.id and rc.created
    assert ra.job.unique_key == "hourly@1893492000"  # 2030-01-01T10:00Z
    err = await fails(stub.Enqueue(req(key="p", period=duration(0.5))))
    assert "unique.period" in err.violations


async def test_enqueue_batch_with_unique_jobs(channel: grpc.aio.Channel) -> None:
    stub = jsg.JobServiceStub(channel)
    first = await stub.Enqueue(req(key="b1"))
    out = await stub.EnqueueBatch(
        js.EnqueueBatchRequest(
            jobs=[req(key="b1"), req(key="b2"), req(key="b2"), js.EnqueueRequest(kind="plain")]
        )
    )
    r = out.results
    assert [x.created for x in r] == [False, True, False, True]
    assert r[0].job.id == first.job.id and r[2].job.id == r[1].job.id
    err = await fails(
        stub.EnqueueBatch(js.EnqueueBatchRequest(jobs=[req(key="ok"), req(key="\x00")]))
    )
    assert "jobs[1].unique.key" in err.violations


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADER_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_unique_jobs_keep_their_metadata_trace_context_and_concurrency_key(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    stub = jsg.JobServiceStub(channel)
    one = req(key="labelled")
    one.metadata.update({"tenant": "acme"})
    one.concurrency_key = "acme"
    one.traceparent, one.tracestate = TRACEPARENT, "vendor=1"
    made = await stub.Enqueue(one)
    assert made.created and dict(made.job.metadata) == {"tenant": "acme"}
    assert (made.job.traceparent, made.job.tracestate) == (TRACEPARENT, "vendor=1")
    assert made.job.concurrency_key == "acme"  # flow control counts it like any other job
    # a batch: the request's own fields, else the call's traceparent metadata
    labelled = req(key="in-batch")
    labelled.metadata.update({"tenant": "beta"})
    out = await stub.EnqueueBatch(
        js.EnqueueBatchRequest(jobs=[labelled, req(key="from-header")]),
        metadata=(("traceparent", HEADER_TRACE),),
    )
    a, b = (r.job for r in out.results)
    assert dict(a.metadata) == {"tenant": "beta"} and not b.metadata
    assert a.traceparent == b.traceparent == HEADER_TRACE
    rows = await db.fetch(
        "SELECT unique_key, metadata, traceparent FROM jobqueue.jobs ORDER BY unique_key"
    )
    assert [tuple(r) for r in rows] == [
        ("from-header", None, HEADER_TRACE),
        ("in-batch", '{"tenant": "beta"}', HEADER_TRACE),
        ("labelled", '{"tenant": "acme"}', TRACEPARENT),
    ]


@pytest.fixture
async def two_replicas(db_url: str) -> AsyncIterator[list[JobQueueServer]]:
    started: list[tuple[JobQueueServer, Store]] = []
    for _ in range(2):
        store = await Store.connect(db_url, min_size=1, max_size=10)
        srv = JobQueueServer(conftest.test_settings(db_url), store)
        await srv.start()
        started.append((srv, store))
    yield [srv for srv, _ in started]
    for srv, store in started:
        await srv.stop()
        await store.close()


async def test_twenty_concurrent_enqueues_across_two_replicas_make_one_job(
    two_replicas: list[JobQueueServer], db: asyncpg.Connection
) -> None:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in two_replicas]
    try:
        stubs = [jsg.JobServiceStub(ch) for ch in channels]
        for key, period in (("race", None), ("race-window", duration(3600))):
            unique: dict[str, Any] = {"key": key}
            if period is not None:
                unique["period"] = period
            calls = [stubs[i % 2].Enqueue(req(**unique)) for i in range(20)]
            out = await asyncio.gather(*calls)
            assert sum(r.created for r in out) == 1
            assert len({r.job.id for r in out}) == 1
        n = await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE unique_key LIKE 'race%'")
        assert n == 2
    finally:
        for ch in channels:
            await ch.close()


async def test_a_requeue_that_meets_its_duplicate_is_failed_precondition(
    channel: grpc.aio.Channel,
) -> None:
    stub = jsg.JobServiceStub(channel)
    first = await stub.Enqueue(req(key="requeue-me"))
    worker = await RawWorker(channel).open(queues=("u",))
    try:
        leased = await worker.next_job()
        await worker.fail(leased, message="boom", failure_class=w.FAILURE_CLASS_DO_NOT_RETRY)
        await job_in_state(channel, first.job.id, job_pb2.JOB_STATE_FAILED)
    finally:
        worker.cancel()
    second = await stub.Enqueue(req(key="requeue-me"))  # failed is not a refusing state
    assert second.created
    dead = dl_grpc.DeadLetterServiceStub(channel)
    err = await fails(dead.RequeueDeadLetter(dl.RequeueDeadLetterRequest(job_id=first.job.id)))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UNIQUE_CONFLICT")
