"""Replicas on one database wake each other with NOTIFY, and only while another one listens.

Each test runs real servers with stores of their own, as separate processes would have. A NOTIFY
is seen on a plain LISTEN connection of the test's; notifications arrive in commit order, so one
the test sends after an enqueue has committed proves, by arriving first, that the enqueue sent
none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import grpc
import pytest

from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from tests import conftest
from tests.lease_helpers import RawWorker
from tests.support import wait_for_value

Replica = tuple[JobQueueServer, Store]


@pytest.fixture
async def replicas(db_url: str) -> AsyncIterator[Callable[[], Awaitable[Replica]]]:
    started: list[Replica] = []

    async def start() -> Replica:
        store = await Store.connect(db_url, min_size=1, max_size=4)
        srv = JobQueueServer(conftest.test_settings(db_url), store)
        await srv.start()
        started.append((srv, store))
        return srv, store

    yield start
    for srv, store in started:
        await srv.stop()  # a second stop does nothing
        await store.close()


async def _notifications(db: asyncpg.Connection) -> asyncio.Queue[tuple[int, str]]:
    heard: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    await db.add_listener(
        "jobqueue_jobs", lambda _c, pid, _ch, payload: heard.put_nowait((pid, payload))
    )
    return heard


async def _enqueue(srv: JobQueueServer, queue: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        resp = await jsg.JobServiceStub(ch).Enqueue(js.EnqueueRequest(queue=queue, kind="noop"))
        return resp.job.id


async def _listening(store: Store, want: bool) -> None:
    async def probe() -> bool:
        return store.peers.listening

    await wait_for_value(probe, lambda v: v is want, what=f"peers.listening == {want}")


async def test_a_lone_replica_sends_no_notify(
    replicas: Callable[[], Awaitable[Replica]], db: asyncpg.Connection
) -> None:
    a, a_store = await replicas()
    heard = await _notifications(db)
    await _listening(a_store, False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ch:
        worker = await RawWorker(ch).open(queues=("solo",))
        try:
            job_id = await _enqueue(a, "solo")
            # still delivered at once: the enqueuing replica wakes its own dispatcher
            assert (await worker.next_job()).job.id == job_id
        finally:
            worker.cancel()
    await db.execute("SELECT pg_notify('jobqueue_jobs', 'sentinel')")
    assert (await asyncio.wait_for(heard.get(), 10))[1] == "sentinel"


async def test_replicas_notify_while_another_listens_and_stop_when_it_leaves(
    replicas: Callable[[], Awaitable[Replica]], db: asyncpg.Connection
) -> None:
    a, a_store = await replicas()
    await _listening(a_store, False)
    b, b_store = await replicas()
    # b counts a when it starts; a hears b's announcement
    await _listening(b_store, True)
    await _listening(a_store, True)

    heard = await _notifications(db)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as ch_b:
        worker = await RawWorker(ch_b).open(queues=("mail",))
        try:
            job_id = await _enqueue(a, "mail")
            pid, queue = await asyncio.wait_for(heard.get(), 10)
            assert (queue, pid in a_store.backends) == ("mail", True)  # a told b
            assert (await worker.next_job()).job.id == job_id
        finally:
            worker.cancel()

    await b.stop()
    await _listening(a_store, False)  # a counts the listeners again every second
    await _enqueue(a, "mail")
    await db.execute("SELECT pg_notify('jobqueue_jobs', 'sentinel')")
    assert (await asyncio.wait_for(heard.get(), 10))[1] == "sentinel"
