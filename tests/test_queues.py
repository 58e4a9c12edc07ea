"""QueueService end to end: live counts from the database; pause and resume seen by a worker."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as pb
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as pb_grpc
from jobqueue_grpc.server import JobQueueServer
from tests.conftest import ServerFactory
from tests.lease_helpers import RawWorker, enqueue
from tests.operators import error_info, seed_job

STATES = ("queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled")


@pytest.fixture
def queues(channel: grpc.aio.Channel) -> pb_grpc.QueueServiceStub:
    return pb_grpc.QueueServiceStub(channel)


async def db_counts(db: asyncpg.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in await db.fetch("SELECT queue, state, count(*) AS n FROM jobqueue.jobs GROUP BY 1, 2"):
        out.setdefault(r["queue"], dict.fromkeys(STATES, 0))[r["state"]] = r["n"]
    return out


def counts_of(q: pb.Queue) -> dict[str, int]:
    return {s: getattr(q.counts, s) for s in STATES}


async def test_list_and_get_show_every_queue_with_live_counts(
    queues: pb_grpc.QueueServiceStub, db: asyncpg.Connection
) -> None:
    assert list((await queues.ListQueues(pb.ListQueuesRequest())).queues) == []
    for i, (queue, state) in enumerate(
        [(q, s) for q in ("mail", "billing", "x.y-z_1") for s in STATES][:19]
    ):
        for _ in range(i % 3 + 1):
            await seed_job(db, queue=queue, state=state)
    want = await db_counts(db)
    got = (await queues.ListQueues(pb.ListQueuesRequest())).queues
    assert [q.name for q in got] == sorted(want)
    for q in got:
        assert counts_of(q) == want[q.name] and not q.paused
        one = (await queues.GetQueue(pb.GetQueueRequest(name=q.name))).queue
        assert one == q
    # Counts are live: the next change shows at once.
    await db.execute("UPDATE jobqueue.jobs SET state = 'succeeded' WHERE queue = 'mail'")
    mail = (await queues.GetQueue(pb.GetQueueRequest(name="mail"))).queue
    assert mail.counts.succeeded == sum(want["mail"].values()) and mail.counts.queued == 0


async def test_unknown_and_bad_queue_names(queues: pb_grpc.QueueServiceStub) -> None:
    for call, req in (
        (queues.GetQueue, pb.GetQueueRequest(name="nope")),
        (queues.ResumeQueue, pb.ResumeQueueRequest(name="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(req)  # type: ignore[operator]
        assert error_info(e.value) == (grpc.StatusCode.NOT_FOUND, "QUEUE_NOT_FOUND")
    for name in ("", "Bad", "a" * 65, "sp ace"):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await queues.PauseQueue(pb.PauseQueueRequest(name=name))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pause_before_any_job_then_resume(
    queues: pb_grpc.QueueServiceStub, db: asyncpg.Connection
) -> None:
    paused = (await queues.PauseQueue(pb.PauseQueueRequest(name="later"))).queue
    assert paused.name == "later" and paused.paused and paused.HasField("paused_at")
    assert counts_of(paused) == dict.fromkeys(STATES, 0)
    listed = (await queues.ListQueues(pb.ListQueuesRequest())).queues
    assert [(q.name, q.paused) for q in listed] == [("later", True)]
    # Pausing again keeps the first pause time.
    again = (await queues.PauseQueue(pb.PauseQueueRequest(name="later"))).queue
    assert again.paused_at == paused.paused_at
    row = await db.fetchrow("SELECT paused, paused_at FROM jobqueue.queues WHERE name = 'later'")
    assert row["paused"] is True
    woke: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener("jobqueue_jobs", lambda *a: woke.put_nowait(a[3]))
    resumed = (await queues.ResumeQueue(pb.ResumeQueueRequest(name="later"))).queue
    assert not resumed.paused and not resumed.HasField("paused_at")
    assert await asyncio.wait_for(woke.get(), 10) == "later"
    assert await db.fetchval("SELECT paused FROM jobqueue.queues WHERE name = 'later'") is False


async def test_a_paused_queue_hands_nothing_to_a_live_worker_and_resume_delivers_the_backlog(
    make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    # Two replicas: the pause is made on one and must hold on the other, where the worker is.
    a: JobQueueServer = await make_server()
    b: JobQueueServer = await make_server()
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ch_a,
        grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as ch_b,
    ):
        admin = pb_grpc.QueueServiceStub(ch_a)
        await admin.PauseQueue(pb.PauseQueueRequest(name="mail"))
        worker = await RawWorker(ch_b).open(queues=("mail", "other"), max_in_flight=50)
        try:
            backlog = {(await enqueue(ch_a, queue="mail")).job.id for _ in range(5)}
            # Enqueue into a paused queue works; a job on another queue is delivered, which shows
            # the worker is live and the mail jobs were passed over, not merely not yet seen.
            marker = (await enqueue(ch_a, queue="other")).job.id
            assert (await worker.next_job()).job.id == marker
            assert worker.jobs.empty()
            q = (await admin.GetQueue(pb.GetQueueRequest(name="mail"))).queue
            assert (q.paused, q.counts.queued, q.counts.running) == (True, 5, 0)
            await admin.ResumeQueue(pb.ResumeQueueRequest(name="mail"))
            got = {(await worker.next_job()).job.id for _ in range(5)}
            assert got == backlog
            n = await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE state = 'running'")
            assert n == 6
        finally:
            worker.cancel()
