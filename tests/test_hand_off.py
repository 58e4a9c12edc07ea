"""Hand-off: a job enqueued while a worker waits with nothing to do is inserted already leased to
that worker's stream and pushed to it, without a claim in between (Dispatcher.hand_off).

The Enqueue answer then shows the job RUNNING. Only a stream whose last claim found nothing
waiting gets one, so older and higher-priority jobs are never passed over; a paused queue, a
job not due yet and an idempotency key that names an existing job all fall back to the usual path.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qpb
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qpb_grpc
from jobqueue_grpc.server import JobQueueServer
from tests.lease_helpers import RawWorker, enqueue, eventually, get_job

RUNNING = job_pb2.JOB_STATE_RUNNING
QUEUED = job_pb2.JOB_STATE_QUEUED


async def _waiting(srv: JobQueueServer, queue: str, kind: str = "noop") -> None:
    """Until the worker's first claim has come back empty: from then on it is handed jobs."""

    async def probe() -> bool:
        return srv.dispatcher.waiting(queue, kind)

    await eventually(probe, bool, what=f"a stream waiting for {queue}/{kind}")


async def test_a_job_enqueued_for_a_waiting_worker_is_handed_to_it_leased(
    server: JobQueueServer, channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    worker = await RawWorker(channel).open(queues=("mail",), max_in_flight=5)
    try:
        await _waiting(server, "mail")
        resp = await enqueue(channel, queue="mail", payload={"to": "a"})
        assert resp.created
        assert (resp.job.state, resp.job.attempt) == (RUNNING, 1)
        leased = await worker.next_job()
        assert leased.job.id == resp.job.id
        # what the worker got is the job as stored, and its lease is the job's current one
        stored = await get_job(channel, resp.job.id)
        assert leased.job == stored
        token = await db.fetchval(
            "SELECT lease_token::text FROM jobqueue.jobs WHERE id = $1::uuid", resp.job.id
        )
        assert leased.lease_token == token
        await worker.complete(leased)
        await eventually(
            lambda: get_job(channel, resp.job.id),
            lambda j: j.state == job_pb2.JOB_STATE_SUCCEEDED,
            what="the handed-off job succeeded",
        )
        # still waiting after its job is done: the next one is handed off too
        await _waiting(server, "mail")
        assert (await enqueue(channel, queue="mail")).job.state == RUNNING
        await worker.next_job()
    finally:
        worker.cancel()


async def test_no_hand_off_past_max_in_flight_and_never_ahead_of_waiting_jobs(
    server: JobQueueServer, channel: grpc.aio.Channel
) -> None:
    worker = await RawWorker(channel).open(queues=("q",), max_in_flight=1)
    try:
        await _waiting(server, "q")
        first = await enqueue(channel, queue="q")
        assert first.job.state == RUNNING
        held = await worker.next_job()
        # the stream is full: these wait in the queue, lowest priority value first
        low = await enqueue(channel, queue="q", priority=5)
        high = await enqueue(channel, queue="q", priority=1)
        assert (low.job.state, high.job.state) == (QUEUED, QUEUED)
        await worker.complete(held)
        assert (await worker.next_job()).job.id == high.job.id
        assert not server.dispatcher.waiting("q", "noop")  # `low` still waits: no hand-off
    finally:
        worker.cancel()


async def test_a_paused_queue_a_later_job_and_a_known_key_are_not_handed_off(
    server: JobQueueServer, channel: grpc.aio.Channel
) -> None:
    worker = await RawWorker(channel).open(queues=("p", "k"), max_in_flight=10)
    try:
        await _waiting(server, "k")
        # an idempotency key already used: the existing job comes back, nothing is pushed again
        first = await enqueue(channel, queue="k", idempotency_key="once")
        assert first.job.state == RUNNING
        assert (await worker.next_job()).job.id == first.job.id
        again = await enqueue(channel, queue="k", idempotency_key="once")
        assert (again.created, again.job.id) == (False, first.job.id)

        later = datetime.now(UTC) + timedelta(hours=1)
        scheduled = await enqueue(channel, queue="k", run_at=later)
        assert scheduled.job.state == job_pb2.JOB_STATE_SCHEDULED

        admin = qpb_grpc.QueueServiceStub(channel)
        await admin.PauseQueue(qpb.PauseQueueRequest(name="p"))
        paused = await enqueue(channel, queue="p")
        assert paused.job.state == QUEUED
        # a marker on the other queue arrives next: nothing else was pushed before it
        await _waiting(server, "k")
        marker = await enqueue(channel, queue="k")
        assert (await worker.next_job()).job.id == marker.job.id
        assert worker.jobs.empty()
        await admin.ResumeQueue(qpb.ResumeQueueRequest(name="p"))
        assert (await worker.next_job()).job.id == paused.job.id
    finally:
        worker.cancel()


async def test_concurrent_enqueues_fill_a_waiting_stream_and_queue_the_rest(
    server: JobQueueServer, channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    worker = await RawWorker(channel).open(queues=("burst",), max_in_flight=3)
    try:
        await _waiting(server, "burst")
        answers = await asyncio.gather(*(enqueue(channel, queue="burst") for _ in range(10)))
        handed = [a.job.id for a in answers if a.job.state == RUNNING]
        assert 1 <= len(handed) <= 3
        got = await worker.next_jobs(3)
        assert set(handed) <= {j.job.id for j in got}
        running = await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE state = 'running'")
        assert running == 3  # never more than max_in_flight, whichever way they were leased
    finally:
        worker.cancel()
