"""The SDK worker starts async handlers inline (one task for a batch of jobs, not a task each):
what a handler can observe stays as in a task of its own, whether it suspends or not."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobqueue_grpc import AsyncClient, JobContext, Worker
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.server import JobQueueServer
from tests.support import running, wait_until

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@pytest.fixture
async def client(server: JobQueueServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}") as c:
        yield c


async def _all_in(client: AsyncClient, ids: list[str], state: int) -> bool:
    return all([(await client.get_job(i)).state == state for i in ids])


async def test_jobs_started_inline_each_have_their_context_and_keep_their_task(
    server: JobQueueServer, client: AsyncClient
) -> None:
    worker = Worker(f"127.0.0.1:{server.port}", concurrency=50)
    seen: dict[int, tuple[str, str, bool]] = {}

    @worker.handler("mixed")
    async def mixed(ctx: JobContext) -> dict[str, Any]:
        n = int(ctx.payload["n"])
        before = VAR.get()
        VAR.set(f"job {n}")
        task = asyncio.current_task()
        if n % 3 == 1:  # suspends, with a timeout and a task group across the suspension
            async with asyncio.timeout(5):
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(asyncio.sleep(0.01))
                await asyncio.sleep(0.01)
        seen[n] = (before, VAR.get(), task is asyncio.current_task())
        return {"n": n}

    # enqueued before the worker connects, so that they reach it together
    results = await client.enqueue_batch(
        [{"kind": "mixed", "payload": {"n": n}} for n in range(40)]
    )
    ids = [r.job.id for r in results]
    async with running(worker):
        await wait_until(lambda: _all_in(client, ids, job_pb2.JOB_STATE_SUCCEEDED), within=15)
    assert seen == {n: ("unset", f"job {n}", True) for n in range(40)}
    assert [dict((await client.get_job(i)).result) for i in ids] == [{"n": n} for n in range(40)]
    assert VAR.get() == "unset"


async def test_a_timeout_in_a_handler_started_inline_ends_only_that_job(
    server: JobQueueServer, client: AsyncClient
) -> None:
    worker = Worker(f"127.0.0.1:{server.port}", concurrency=10)

    @worker.handler("slow")
    async def slow(ctx: JobContext) -> None:
        async with asyncio.timeout(0.2):
            await asyncio.sleep(30)

    @worker.handler("quick")
    async def quick(ctx: JobContext) -> None:
        pass

    results = await client.enqueue_batch(
        [{"kind": "quick"}, {"kind": "slow", "max_attempts": 1}, {"kind": "quick"}]
    )
    q1, slow_id, q2 = (r.job.id for r in results)
    async with running(worker):
        await wait_until(lambda: _all_in(client, [slow_id], job_pb2.JOB_STATE_FAILED), within=15)
        await wait_until(lambda: _all_in(client, [q1, q2], job_pb2.JOB_STATE_SUCCEEDED), within=15)
        assert worker.connected.is_set()  # the stream's task was not the one cancelled
        later = (await client.enqueue("quick", {})).job.id
        await wait_until(lambda: _all_in(client, [later], job_pb2.JOB_STATE_SUCCEEDED), within=15)
    assert (await client.get_job(slow_id)).last_error.message.startswith("TimeoutError")


async def test_cancel_reaches_a_handler_that_suspended_after_starting_inline(
    server: JobQueueServer, client: AsyncClient
) -> None:
    worker = Worker(f"127.0.0.1:{server.port}", concurrency=10)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @worker.handler("quick")
    async def quick(ctx: JobContext) -> None:
        pass

    @worker.handler("long")
    async def long(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    results = await client.enqueue_batch([{"kind": "quick"}, {"kind": "long"}, {"kind": "quick"}])
    ids = [r.job.id for r in results]
    async with running(worker):
        await asyncio.wait_for(started.wait(), 10)
        await client.cancel_job(ids[1])
        await asyncio.wait_for(cancelled.wait(), 10)
        await wait_until(lambda: _all_in(client, [ids[1]], job_pb2.JOB_STATE_CANCELLED), within=15)
        await wait_until(
            lambda: _all_in(client, [ids[0], ids[2]], job_pb2.JOB_STATE_SUCCEEDED), within=15
        )


async def test_a_handler_cancelling_its_own_task_inline_spares_the_jobs_after_it(
    server: JobQueueServer, client: AsyncClient
) -> None:
    worker = Worker(f"127.0.0.1:{server.port}", concurrency=10)

    @worker.handler("rude")
    async def rude(ctx: JobContext) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # and returns: the job itself succeeds

    @worker.handler("polite")
    async def polite(ctx: JobContext) -> None:
        await asyncio.sleep(0.01)

    results = await client.enqueue_batch(
        [{"kind": "rude"}, {"kind": "polite"}, {"kind": "rude"}, {"kind": "polite"}]
    )
    ids = [r.job.id for r in results]
    async with running(worker):
        await wait_until(lambda: _all_in(client, ids, job_pb2.JOB_STATE_SUCCEEDED), within=15)
