"""EnqueueBatch builds its answer from the values sent (not from rows read back): every job it
returns must be the job GetJob shows, field for field, across mixed, uniform, keyed, repeated-key
and scheduled batches; and the enqueue counters count what was created."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2, job_service_pb2_grpc
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as pb


def payload(**f: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(f)
    return s


async def test_batch_matches_getjob(channel: grpc.aio.Channel) -> None:
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    first = (
        await stub.Enqueue(pb.EnqueueRequest(kind="x", idempotency_key="pre", payload=payload(a=1)))
    ).job
    future = timestamp_pb2.Timestamp()
    future.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    past.nanos += 123  # sub-microsecond part
    reqs = []
    reqs.append(pb.EnqueueRequest(kind="a"))
    reqs.append(
        pb.EnqueueRequest(
            kind="b",
            queue="q1",
            priority=-5,
            max_attempts=3,
            payload=payload(x=1.5, s="é", l=[1, "a", None], n={"k": True}),
        )
    )
    reqs.append(pb.EnqueueRequest(kind="c", run_at=future, idempotency_key="k1"))
    reqs.append(pb.EnqueueRequest(kind="d", run_at=past))
    r = pb.EnqueueRequest(kind="e")
    r.lease_duration.FromMilliseconds(1500)
    r.retry_policy.backoff_base.FromNanoseconds(1_000_000_001)
    reqs.append(r)
    r = pb.EnqueueRequest(kind="f")
    r.retry_policy.backoff_cap.FromSeconds(60)
    reqs.append(r)
    reqs.append(pb.EnqueueRequest(kind="g", idempotency_key="pre"))
    reqs.append(pb.EnqueueRequest(kind="h", idempotency_key="k1"))
    reqs.append(pb.EnqueueRequest(kind="i", payload=payload()))
    reqs.append(pb.EnqueueRequest(kind="j", queue="q1"))
    resp = await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs))
    assert [x.created for x in resp.results] == [True] * 6 + [False, False, True, True]
    assert resp.results[6].job == first
    assert resp.results[7].job == resp.results[2].job
    ids = [uuid.UUID(x.job.id) for x in resp.results if x.created]
    assert ids == sorted(ids)
    for x in resp.results:
        got = (await stub.GetJob(pb.GetJobRequest(id=x.job.id))).job
        assert got == x.job, (got, x.job)
    assert resp.results[2].job.state == job_pb2.JOB_STATE_SCHEDULED
    assert resp.results[3].job.state == job_pb2.JOB_STATE_QUEUED
    # an all-conflict batch
    resp2 = await stub.EnqueueBatch(
        pb.EnqueueBatchRequest(jobs=[pb.EnqueueRequest(kind="z", idempotency_key="pre")])
    )
    assert not resp2.results[0].created and resp2.results[0].job == first


async def test_uniform_batches(channel: grpc.aio.Channel) -> None:
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    future = timestamp_pb2.Timestamp()
    future.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    reqs = []
    for _ in range(4):
        r = pb.EnqueueRequest(
            kind="u",
            queue="qq",
            priority=7,
            max_attempts=2,
            run_at=future,
            payload=payload(a=[1, 2]),
        )
        r.lease_duration.FromSeconds(45)
        r.retry_policy.backoff_base.FromSeconds(3)
        r.retry_policy.backoff_cap.FromSeconds(9)
        reqs.append(r)
    resp = await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs))
    assert all(x.created for x in resp.results)
    for x in resp.results:
        assert x.job.state == job_pb2.JOB_STATE_SCHEDULED
        got = (await stub.GetJob(pb.GetJobRequest(id=x.job.id))).job
        assert got == x.job
    resp = await stub.EnqueueBatch(
        pb.EnqueueBatchRequest(jobs=[pb.EnqueueRequest(kind="d", idempotency_key="same")] * 3)
    )
    assert [x.created for x in resp.results] == [True, False, False]
    assert len({x.job.id for x in resp.results}) == 1
    got = (await stub.GetJob(pb.GetJobRequest(id=resp.results[0].job.id))).job
    assert all(x.job == got for x in resp.results)


async def test_batch_metrics(channel: grpc.aio.Channel) -> None:
    from jobqueue_grpc import metrics

    def val(q: str, k: str) -> float:
        return float(metrics.JOBS_ENQUEUED.labels(q, k)._value.get())

    stub = job_service_pb2_grpc.JobServiceStub(channel)
    b = {k: val(*k) for k in [("mq1", "a"), ("mq2", "a"), ("mq1", "b")]}
    await stub.EnqueueBatch(
        pb.EnqueueBatchRequest(jobs=[pb.EnqueueRequest(queue="mq1", kind="a")] * 3)
    )
    assert val("mq1", "a") == b[("mq1", "a")] + 3
    await stub.EnqueueBatch(
        pb.EnqueueBatchRequest(
            jobs=[
                pb.EnqueueRequest(queue="mq1", kind="a", idempotency_key="m1"),
                pb.EnqueueRequest(queue="mq2", kind="a"),
                pb.EnqueueRequest(queue="mq1", kind="b", idempotency_key="m1"),
            ]
        )
    )
    assert val("mq1", "a") == b[("mq1", "a")] + 4
    assert val("mq2", "a") == b[("mq2", "a")] + 1
    assert val("mq1", "b") == b[("mq1", "b")]
