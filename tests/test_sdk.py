"""The Python SDK against a real server: Client methods and Worker behaviour in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest

from jobqueue_grpc import AsyncClient, Client, DoNotRetry, JobContext, RetryAfter, Worker
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2, job_service_pb2
from jobqueue_grpc.server import JobQueueServer
from tests.support import running, wait_until


@pytest.fixture
async def client(server: JobQueueServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}") as c:
        yield c


async def _is(client: AsyncClient, job_id: str, state: int) -> bool:
    return (await client.get_job(job_id)).state == state


async def test_worker_completes_with_result_and_progress(
    server: JobQueueServer, client: AsyncClient
) -> None:
    worker = Worker(f"127.0.0.1:{server.port}", concurrency=2)

    @worker.handler("greet")
    async def greet(ctx: JobContext) -> dict[str, Any]:
        await ctx.progress({"pct": 50})
        return {"hello": ctx.payload["name"]}

    async with running(worker):
        r = await client.enqueue("greet", {"name": "ada"})
        await wait_until(lambda: _is(client, r.job.id, job_pb2.JOB_STATE_SUCCEEDED), within=15)
    job = await client.get_job(r.job.id)
    assert dict(job.result) == {"hello": "ada"}
    assert dict(job.progress) == {"pct": 50}
    assert job.attempt == 1


async def test_worker_the_server_refuses_stops_instead_of_retrying(server: JobQueueServer) -> None:
    # max_in_flight above the server's cap: every reconnect would be refused the same way
    worker = Worker(f"127.0.0.1:{server.port}", concurrency=server.settings.max_in_flight + 1)

    @worker.handler("noop")
    async def noop(ctx: JobContext) -> None:
        pass

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(worker.run(), 10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_in_flight" in (refused.value.details() or "")


async def test_do_not_retry_dead_letters_at_once(
    server: JobQueueServer, client: AsyncClient, db: asyncpg.Connection
) -> None:
    worker = Worker(f"127.0.0.1:{server.port}")

    @worker.handler("bad")
    async def bad(ctx: JobContext) -> None:
        raise DoNotRetry("payload is nonsense")

    async with running(worker):
        r = await client.enqueue("bad", {}, max_attempts=5)
        await wait_until(lambda: _is(client, r.job.id, job_pb2.JOB_STATE_FAILED), within=15)
    job = await client.get_job(r.job.id)
    assert job.attempt == 1
    assert "payload is nonsense" in job.last_error.message
    attempts = await db.fetchval(
        "SELECT attempts FROM jobqueue.dead_letters WHERE job_id = $1::uuid", job.id
    )
    assert attempts == 1


async def test_exceptions_retry_until_attempts_run_out(
    make_server: Callable[..., Awaitable[JobQueueServer]],
) -> None:
    srv = await make_server(backoff_base=0.05, backoff_cap=0.2)
    worker = Worker(f"127.0.0.1:{srv.port}")
    calls: list[int] = []

    @worker.handler("flaky")
    def flaky(ctx: JobContext) -> None:  # a sync handler, run in a thread
        calls.append(ctx.attempt)
        raise RuntimeError(f"boom {ctx.attempt}")

    async with AsyncClient(f"127.0.0.1:{srv.port}") as client, running(worker):
        r = await client.enqueue("flaky", {}, max_attempts=3)
        await wait_until(lambda: _is(client, r.job.id, job_pb2.JOB_STATE_FAILED), within=15)
        job = await client.get_job(r.job.id)
    assert calls == [1, 2, 3]
    assert [e.message for e in job.errors] == [f"RuntimeError: boom {n}" for n in (1, 2, 3)]
    assert all(e.source == "worker" for e in job.errors)


async def test_retry_after_is_honoured(server: JobQueueServer, client: AsyncClient) -> None:
    worker = Worker(f"127.0.0.1:{server.port}")
    seen: list[float] = []

    @worker.handler("later")
    async def later(ctx: JobContext) -> None:
        seen.append(time.monotonic())
        if ctx.attempt == 1:
            raise RetryAfter(0.5)

    async with running(worker):
        r = await client.enqueue("later", {})
        await wait_until(lambda: _is(client, r.job.id, job_pb2.JOB_STATE_SUCCEEDED), within=15)
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.45  # not before the delay the handler asked for


async def test_cancel_reaches_async_handler(server: JobQueueServer, client: AsyncClient) -> None:
    worker = Worker(f"127.0.0.1:{server.port}")
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @worker.handler("long")
    async def long(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running(worker):
        r = await client.enqueue("long", {})
        await asyncio.wait_for(started.wait(), 10)
        resp = await client.cancel_job(r.job.id)
        assert resp.outcome == job_service_pb2.CANCEL_OUTCOME_CANCEL_REQUESTED
        await asyncio.wait_for(cancelled.wait(), 10)
        await wait_until(lambda: _is(client, r.job.id, job_pb2.JOB_STATE_CANCELLED), within=15)


async def test_sync_client(server: JobQueueServer) -> None:
    def use() -> None:
        with Client(f"127.0.0.1:{server.port}") as c:
            r = c.enqueue("x", {"a": 1}, idempotency_key="k")
            again = c.enqueue("x", {"a": 1}, idempotency_key="k")
            assert r.created and not again.created and again.job.id == r.job.id
            assert c.get_job(r.job.id).kind == "x"
            assert [j.id for j in c.iter_jobs(kind="x")] == [r.job.id]
            assert c.cancel_job(r.job.id).job.state == job_pb2.JOB_STATE_CANCELLED

    await asyncio.to_thread(use)


async def test_a_result_that_is_not_json_fails_the_job(
    server: JobQueueServer, client: AsyncClient
) -> None:
    worker = Worker(f"127.0.0.1:{server.port}")

    @worker.handler("odd")
    async def odd(ctx: JobContext) -> dict[str, Any]:
        return {"when": object()}  # a Struct cannot hold it

    async with running(worker):
        r = await client.enqueue("odd", {}, max_attempts=3)
        await wait_until(lambda: _is(client, r.job.id, job_pb2.JOB_STATE_FAILED), within=15)
    job = await client.get_job(r.job.id)
    assert job.attempt == 1  # do not retry: it would fail the same way
    assert job.last_error.message
