"""Hand-off: a job enqueued while a worker waits with nothing to do is inserted already leased to
that worker's stream and pushed to it, without a claim in between (engine/handoff.py).

The Enqueue answer then shows the job RUNNING. Only a stream whose last claim found nothing
waiting, with no wake-up since, gets one, so no job this replica knows to be waiting is passed
over (one enqueued on another replica a moment before, whose NOTIFY is still on its way, can
be: the same race two claims have); a paused queue, a job not due yet and an idempotency key
that names an existing job all fall back to the usual path.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.engine.engine import Engine
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qpb
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qpb_grpc
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from jobqueue_grpc.store.errors import database_unavailable
from tests.lease_helpers import RawWorker, enqueue, get_job
from tests.support import wait_for_value

RUNNING = job_pb2.JOB_STATE_RUNNING
QUEUED = job_pb2.JOB_STATE_QUEUED


async def _waiting(srv: JobQueueServer, queue: str, kind: str = "noop") -> None:
    """Until the worker's first claim has come back empty: from then on it is handed jobs."""

    async def probe() -> bool:
        return srv.engine.handoffs.waiting(queue, kind)

    await wait_for_value(probe, bool, what=f"a stream waiting for {queue}/{kind}")


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
        await wait_for_value(
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
        assert not server.engine.handoffs.waiting("q", "noop")  # `low` still waits: no hand-off
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


async def test_an_insert_that_fails_after_its_commit_puts_its_handed_off_jobs_back(
    server: JobQueueServer, channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    """The insert committed, then the call failed (here: as if the connection dropped before the
    answer): the job was never pushed, so it goes back to the queue without spending an attempt
    and reaches the worker through a claim."""
    worker = await RawWorker(channel).open(queues=("lost",), max_in_flight=5)
    jobs = server.store.jobs
    real = jobs.insert

    async def insert_then_fail(*args: object, **kw: object) -> object:
        await real(*args, **kw)  # type: ignore[arg-type]
        raise database_unavailable()  # what the store raises for a lost connection

    try:
        await _waiting(server, "lost")
        jobs.insert = insert_then_fail  # type: ignore[method-assign]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await enqueue(channel, queue="lost")
        jobs.insert = real  # type: ignore[method-assign]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        leased = await worker.next_job()
        assert (leased.job.queue, leased.job.attempt) == ("lost", 1)
        row = await db.fetchrow(
            "SELECT attempt, lease_token::text AS token FROM jobqueue.jobs WHERE queue = 'lost'"
        )
        assert (row["attempt"], row["token"]) == (1, leased.lease_token)
        assert all(s.reserved == 0 for s in server.engine.registry)
    finally:
        jobs.insert = real  # type: ignore[method-assign]
        worker.cancel()


async def test_streams_get_only_the_kinds_they_asked_for(
    server: JobQueueServer, channel: grpc.aio.Channel
) -> None:
    a = await RawWorker(channel).open(queues=("mixed",), kinds=("resize",))
    b = await RawWorker(channel).open(queues=("mixed",), kinds=("email",))
    try:
        await _waiting(server, "mixed", "resize")
        await _waiting(server, "mixed", "email")
        email = await enqueue(channel, "email", queue="mixed")
        resize = await enqueue(channel, "resize", queue="mixed")
        assert (email.job.state, resize.job.state) == (RUNNING, RUNNING)
        assert (await a.next_job()).job.id == resize.job.id
        assert (await b.next_job()).job.id == email.job.id
    finally:
        a.cancel()
        b.cancel()


async def test_several_new_jobs_take_the_slots_in_the_claims_order(store: Store) -> None:
    """Jobs of one group commit: the free slots go by priority, then run_at, then id."""
    d = Engine(store, Settings())
    s = d.open_stream("w", ["q"], None, 2)
    d.claimer.drained[s.group] = d.bus.generation  # its last claim found nothing
    past = datetime.now(UTC) - timedelta(hours=1)

    def job(priority: int, run_at: datetime | None = None) -> NewJob:
        return NewJob("q", "noop", "{}", priority, 5, run_at, None, 30.0, None, None)

    jobs = [job(1), job(0), job(0, past), job(0, datetime.now(UTC) + timedelta(hours=1))]
    handoff = d.handoffs.offer(jobs)
    assert handoff is not None
    assert [x is s for x in handoff.streams] == [False, True, True, False]
    assert s.reserved == 2 and s.capacity == 0
    handoff.done([])
    assert s.reserved == 0
