"""WorkerService.Lease at the protocol level, through a real server and PostgreSQL."""

from __future__ import annotations

import grpc

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from tests.lease_helpers import RawWorker, enqueue, get_job


async def test_job_is_pushed_and_completed(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    job = (await enqueue(channel, "send_email", payload={"to": "a@example.com"})).job
    leased = await worker.next_job()
    assert leased.job.id == job.id
    assert leased.job.attempt == 1
    assert dict(leased.job.payload) == {"to": "a@example.com"}
    assert leased.lease_token
    running = await get_job(channel, job.id)
    assert running.state == job_pb2.JOB_STATE_RUNNING
    assert running.worker_id == "raw"
    await worker.complete(leased)
    await worker.close()
    done = await get_job(channel, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
