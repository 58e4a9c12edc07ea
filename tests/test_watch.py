"""WatchJob / WatchJobs: a job's changes pushed to watchers on any replica, NOTIFYs only while
someone watches, bounded per connection, and the SDK's `wait`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from jobqueue_grpc import AsyncClient, Client, JobContext, Worker, metrics
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from jobqueue_grpc.store.migrate import MIGRATIONS_DIR
from jobqueue_grpc.store.notify import CHANGES_CHANNEL
from jobqueue_grpc.store.queries import q
from tests import conftest
from tests.support import running, wait_until

S = job_pb2


async def until(pred: Any) -> None:
    async def check() -> bool:
        return bool(pred())

    await wait_until(check, within=15)


@pytest.fixture
async def client(server: JobQueueServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}") as c:
        yield c


def test_trigger_notifies_the_channel_notify_py_names() -> None:
    text = (MIGRATIONS_DIR / "0050_job_watch.sql").read_text()
    assert f"pg_notify('{CHANGES_CHANNEL}'" in text


async def _heard(db: asyncpg.Connection) -> asyncio.Queue[str]:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener(CHANGES_CHANNEL, lambda *a: heard.put_nowait(a[3]))
    await db.add_listener("t_marker", lambda *a: heard.put_nowait("marker"))
    return heard


async def test_changes_are_notified_only_while_someone_watches(
    store: Store, db: asyncpg.Connection, db_url: str
) -> None:
    heard = await _heard(db)
    other = await asyncpg.connect(db_url)
    try:
        job = await other.fetchval(
            "INSERT INTO jobqueue.jobs (id, queue, kind, payload, state, max_attempts,"
            " lease_seconds) VALUES (gen_random_uuid(), 'q', 'k', '{}', 'queued', 1, 30)"
            " RETURNING id"
        )
        await other.execute("UPDATE jobqueue.jobs SET state = 'running' WHERE id = $1", job)
        # notifications arrive in commit order: the marker first means the two sent none
        await other.execute("NOTIFY t_marker")
        assert await asyncio.wait_for(heard.get(), 5) == "marker"

        await other.execute(q("add_watcher"))  # this session watches now
        await other.execute("UPDATE jobqueue.jobs SET progress = '{\"p\": 1}' WHERE id = $1", job)
        assert await asyncio.wait_for(heard.get(), 5) == str(job)
        # a lease extension is not a change a watcher sees
        await other.execute("UPDATE jobqueue.jobs SET lease_expires_at = now() WHERE id = $1", job)
        await other.execute("NOTIFY t_marker")
        assert await asyncio.wait_for(heard.get(), 5) == "marker"

        await other.execute(q("remove_watcher"))
        await other.execute("UPDATE jobqueue.jobs SET state = 'succeeded' WHERE id = $1", job)
        await other.execute("NOTIFY t_marker")
        assert await asyncio.wait_for(heard.get(), 5) == "marker"
    finally:
        await other.close()


async def test_many_changes_are_notified_in_chunks(db: asyncpg.Connection) -> None:
    heard = await _heard(db)
    await db.execute(q("add_watcher"))
    await db.execute(
        "INSERT INTO jobqueue.jobs (id, queue, kind, payload, state, max_attempts,"
        " lease_seconds) SELECT gen_random_uuid(), 'q', 'k', '{}', 'queued', 1, 30"
        " FROM generate_series(1, 450)"
    )
    chunks = [await asyncio.wait_for(heard.get(), 5) for _ in range(3)]
    assert sorted(len(c.split()) for c in chunks) == [50, 200, 200]


async def test_watch_job_follows_a_job_to_success(
    server: JobQueueServer, client: AsyncClient
) -> None:
    worker = Worker(f"127.0.0.1:{server.port}")
    go = asyncio.Event()

    @worker.handler("greet")
    async def greet(ctx: JobContext) -> dict[str, Any]:
        await ctx.progress({"pct": 50})
        await go.wait()
        return {"hello": ctx.payload["name"]}

    r = await client.enqueue("greet", {"name": "ada"})
    seen: list[job_pb2.Job] = []

    async def watch() -> None:
        async for job in client.watch(r.job.id):
            seen.append(job)
            if job.progress:
                go.set()

    watcher = asyncio.create_task(watch())
    await until(lambda: len(seen) >= 1)
    assert seen[0].state == S.JOB_STATE_QUEUED
    async with running(worker):
        await asyncio.wait_for(watcher, 15)  # ends by itself at the terminal state
    states = [j.state for j in seen]
    assert states[0] == S.JOB_STATE_QUEUED
    assert S.JOB_STATE_RUNNING in states
    assert states[-1] == S.JOB_STATE_SUCCEEDED
    assert dict(seen[-1].result) == {"hello": "ada"}
    assert any(dict(j.progress) == {"pct": 50} for j in seen)


async def test_wait_returns_the_terminal_job(server: JobQueueServer, client: AsyncClient) -> None:
    worker = Worker(f"127.0.0.1:{server.port}")

    @worker.handler("x")
    async def x(ctx: JobContext) -> dict[str, Any]:
        return {"ok": True}

    r = await client.enqueue("x")
    async with running(worker):
        job = await asyncio.wait_for(client.wait(r.job.id), 15)
    assert job.state == S.JOB_STATE_SUCCEEDED
    assert dict(job.result) == {"ok": True}
    # a job that is terminal already: one message, at once
    done = [j async for j in client.watch(r.job.id)]
    assert [j.state for j in done] == [S.JOB_STATE_SUCCEEDED]


async def test_changes_made_through_another_replica_arrive(db_url: str) -> None:
    stores: list[Store] = []
    servers: list[JobQueueServer] = []
    try:
        for _ in range(2):
            st = await Store.connect(db_url, min_size=1, max_size=4)
            stores.append(st)
            srv = JobQueueServer(conftest.test_settings(db_url), st)
            await srv.start()
            servers.append(srv)
        a, b = servers
        async with (
            AsyncClient(f"127.0.0.1:{a.port}") as ca,
            AsyncClient(f"127.0.0.1:{b.port}") as cb,
        ):
            r = await cb.enqueue("later", queue="w")
            seen: list[int] = []

            async def watch() -> None:
                async for job in ca.watch(r.job.id):
                    seen.append(job.state)

            task = asyncio.create_task(watch())
            await until(lambda: seen == [S.JOB_STATE_QUEUED])
            await cb.cancel_job(r.job.id)  # through the other replica
            await asyncio.wait_for(task, 10)
            assert seen == [S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLED]
    finally:
        for srv in servers:
            await srv.stop()
        for st in stores:
            await st.close()


async def test_watches_are_bounded_per_connection(
    make_server: conftest.ServerFactory, db: asyncpg.Connection
) -> None:
    srv = await make_server(max_watches_per_connection=2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = jsg.JobServiceStub(ch)
        ids = [(await stub.Enqueue(js.EnqueueRequest(kind="k"))).job.id for _ in range(3)]
        calls = [stub.WatchJob(js.WatchJobRequest(id=i)) for i in ids[:2]]
        for c in calls:
            assert (await c.read()).job.state == S.JOB_STATE_QUEUED
        third = stub.WatchJob(js.WatchJobRequest(id=ids[2]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await third.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 watches" in (err.value.details() or "")
        assert await db.fetchval("SELECT count(*) FROM jobqueue.job_watchers") == 1
        for c in calls:
            c.cancel()
    # the last watcher gone, the replica's row goes: nobody NOTIFYs any more

    async def no_row() -> bool:
        return await db.fetchval("SELECT count(*) FROM jobqueue.job_watchers") == 0

    await wait_until(no_row, within=15)


async def test_watch_jobs_sends_changes_in_its_queue(
    server: JobQueueServer, client: AsyncClient
) -> None:
    stub = jsg.JobServiceStub(client.channel)
    call = stub.WatchJobs(js.WatchJobsRequest(queue="live"))
    ready = await asyncio.wait_for(call.read(), 10)  # empty: watching from now on
    assert not ready.jobs and not ready.resync

    async def next_jobs() -> list[job_pb2.Job]:
        while True:
            resp = await asyncio.wait_for(call.read(), 10)
            assert not resp.resync
            if resp.jobs:
                return list(resp.jobs)

    other = await client.enqueue("k", queue="elsewhere")
    mine = await client.enqueue("k", queue="live")
    seen: list[tuple[str, int]] = []
    while (mine.job.id, S.JOB_STATE_QUEUED) not in seen:
        seen += [(j.id, j.state) for j in await next_jobs()]
    await client.cancel_job(mine.job.id)
    while (mine.job.id, S.JOB_STATE_CANCELLED) not in seen:
        seen += [(j.id, j.state) for j in await next_jobs()]
    assert all(i != other.job.id for i, _ in seen)
    call.cancel()


async def test_sync_client_wait(server: JobQueueServer, client: AsyncClient) -> None:
    r = await client.enqueue("k")

    def wait() -> job_pb2.Job:
        with Client(f"127.0.0.1:{server.port}") as sync:
            return sync.wait(r.job.id, timeout=20)

    waiting = asyncio.create_task(asyncio.to_thread(wait))

    async def watched() -> bool:
        return server.engine.watches.count == 1

    await wait_until(watched, within=15)
    await client.cancel_job(r.job.id)
    assert (await waiting).state == S.JOB_STATE_CANCELLED


async def test_a_draining_server_ends_its_watches(
    make_server: conftest.ServerFactory,
) -> None:
    srv = await make_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = jsg.JobServiceStub(ch)
        job = (await stub.Enqueue(js.EnqueueRequest(kind="k"))).job
        call = stub.WatchJob(js.WatchJobRequest(id=job.id))
        assert (await call.read()).job.state == S.JOB_STATE_QUEUED
        stopping = asyncio.create_task(srv.stop())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (err.value.details() or "")
        await stopping


async def test_a_lost_listen_link_tells_watchers_to_list_again(
    server: JobQueueServer, client: AsyncClient, db: asyncpg.Connection
) -> None:
    stub = jsg.JobServiceStub(client.channel)
    call = stub.WatchJobs(js.WatchJobsRequest(queue="relink"))
    assert not (await asyncio.wait_for(call.read(), 10)).jobs  # watching from now on
    await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        "jobqueue-grpc-listener",
    )
    assert (await asyncio.wait_for(call.read(), 10)).resync  # changes may have gone unheard

    async def listening_again() -> bool:  # a live session's row (the dead one's is pruned)
        return (
            await db.fetchval(
                "SELECT count(*) FROM jobqueue.job_watchers w"
                " JOIN pg_stat_activity a ON a.pid = w.backend"
            )
            == 1
        )

    await wait_until(listening_again, within=15)
    r = await client.enqueue("k", queue="relink")
    while True:
        resp = await asyncio.wait_for(call.read(), 10)
        if resp.jobs:
            assert [j.id for j in resp.jobs] == [r.job.id]
            break
        assert resp.resync  # the one sent once the row was back
    call.cancel()


async def test_a_watch_the_client_drops_is_counted_cancelled(
    make_server: conftest.ServerFactory,
) -> None:
    from tests.test_http import envelope, free_port

    srv = await make_server(http_port=free_port())
    series = metrics.RPCS.labels("/jobqueue.v1.JobService/WatchJob", "CANCELLED")
    before = series._value.get()
    async with AsyncClient(f"127.0.0.1:{srv.port}") as client:
        r = await client.enqueue("k")
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-N", "-H", "Content-Type: application/connect+json",
        f"http://127.0.0.1:{srv.http_port}/jobqueue.v1.JobService/WatchJob",
        "--data-binary", "@-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(envelope(0, json.dumps({"id": r.job.id}).encode()))
    proc.stdin.close()
    await asyncio.wait_for(proc.stdout.readexactly(5), 10)  # the first message is coming
    proc.kill()  # the client goes away mid-stream
    await proc.wait()

    async def counted() -> bool:
        return bool(series._value.get() == before + 1) and srv.engine.watches.count == 0

    await wait_until(counted, within=15)


def test_a_server_stream_closed_under_it_counts_as_cancelled() -> None:
    # grpc closes a server-streaming handler's generator (GeneratorExit) when the call ends
    # under it, e.g. at server stop: a client that left, not an UNKNOWN error to warn about
    from jobqueue_grpc.api.interceptors import _code

    assert _code(None, GeneratorExit()) == grpc.StatusCode.CANCELLED  # type: ignore[arg-type]
