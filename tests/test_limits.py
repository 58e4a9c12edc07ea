"""Each limit hit, answered with the right code, and nothing written."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobqueue_grpc.config import Settings
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2, job_service_pb2_grpc
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2_grpc as wsg
from tests.conftest import ServerFactory
from tests.hardening import Proxy
from tests.lease_helpers import RawWorker
from tests.support import error_info, wait_until


async def jobs_in(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM jobqueue.jobs"))


def payload_of(nbytes: int) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"blob": "x" * nbytes})
    return s


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch


async def test_message_over_max_message_bytes_is_resource_exhausted(
    make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    srv = await make_server(max_message_bytes=64 * 1024)
    async with connect(srv.port) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        req = job_service_pb2.EnqueueRequest(kind="k", payload=payload_of(100 * 1024))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Enqueue(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Under the limit the same connection still works.
        small = job_service_pb2.EnqueueRequest(kind="k", payload=payload_of(1024))
        assert (await stub.Enqueue(small, timeout=10)).created
    assert await jobs_in(db) == 1


async def test_payload_over_the_limit_is_invalid_argument(
    make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    srv = await make_server(payload_max_bytes=1000)
    async with connect(srv.port) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        for call in (
            stub.Enqueue(job_service_pb2.EnqueueRequest(kind="k", payload=payload_of(1000))),
            stub.EnqueueBatch(
                job_service_pb2.EnqueueBatchRequest(
                    jobs=[
                        job_service_pb2.EnqueueRequest(kind="k"),
                        job_service_pb2.EnqueueRequest(kind="k", payload=payload_of(1000)),
                    ]
                )
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(err.value).reason == "PAYLOAD_TOO_LARGE"
    assert await jobs_in(db) == 0


async def test_batch_over_the_limit_is_invalid_argument(
    make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    srv = await make_server(max_batch_size=5)
    async with connect(srv.port) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        job = job_service_pb2.EnqueueRequest(kind="k")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.EnqueueBatch(job_service_pb2.EnqueueBatchRequest(jobs=[job] * 6))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await jobs_in(db) == 0
        resp = await stub.EnqueueBatch(job_service_pb2.EnqueueBatchRequest(jobs=[job] * 5))
        assert len(resp.results) == 5
    assert await jobs_in(db) == 5


async def test_page_over_the_limit_is_invalid_argument(make_server: ServerFactory) -> None:
    srv = await make_server(max_page_size=10, default_page_size=5)
    async with connect(srv.port) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        job = job_service_pb2.EnqueueRequest(kind="k")
        await stub.EnqueueBatch(job_service_pb2.EnqueueBatchRequest(jobs=[job] * 12))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListJobs(job_service_pb2.ListJobsRequest(page_size=11))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len((await stub.ListJobs(job_service_pb2.ListJobsRequest(page_size=10))).jobs) == 10
        assert len((await stub.ListJobs(job_service_pb2.ListJobsRequest())).jobs) == 5


async def test_max_in_flight_over_the_cap_is_refused_and_leases_nothing(
    make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    srv = await make_server(max_in_flight=3)
    async with connect(srv.port) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        job = job_service_pb2.EnqueueRequest(kind="k")
        await stub.EnqueueBatch(job_service_pb2.EnqueueBatchRequest(jobs=[job] * 5))
        greedy = await RawWorker(ch).open(max_in_flight=4)
        assert await asyncio.wait_for(greedy.ended, 10) == grpc.StatusCode.INVALID_ARGUMENT
        assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE state='running'") == 0
        # At the cap: exactly that many jobs go out on the stream, no more.
        ok = await RawWorker(ch).open(max_in_flight=3)
        await ok.next_jobs(3)
        assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE state='running'") == 3
        await ok.call.done_writing()
        await asyncio.wait_for(ok.ended, 10)


async def test_lease_streams_over_the_limit_are_resource_exhausted(
    make_server: ServerFactory,
) -> None:
    srv = await make_server(max_lease_streams=2)
    async with connect(srv.port) as ch:
        a = await RawWorker(ch).open(worker_id="a")
        b = await RawWorker(ch).open(worker_id="b")
        third = await RawWorker(ch).open(worker_id="c")
        assert await asyncio.wait_for(third.ended, 10) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert third.error is not None
        assert error_info(third.error).reason == "TOO_MANY_STREAMS"
        assert not a.ended.done() and not b.ended.done()
        # A slot freed is a slot again.
        await a.call.done_writing()
        await asyncio.wait_for(a.ended, 10)

        # The slot is given back before the stream's status is sent, so this one is admitted:
        # it proves it by receiving a job.
        d = await RawWorker(ch).open(worker_id="d", queues=("only-d",))
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        await stub.Enqueue(job_service_pb2.EnqueueRequest(kind="k", queue="only-d"))
        assert (await d.next_job()).job.queue == "only-d"
        await d.call.done_writing()
        await asyncio.wait_for(d.ended, 10)
        await b.call.done_writing()
        await asyncio.wait_for(b.ended, 10)


async def test_concurrent_rpcs_over_the_limit_are_resource_exhausted(
    make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    srv = await make_server(max_concurrent_rpcs=1)
    async with connect(srv.port) as ch:
        holder = await RawWorker(ch).open()  # one long-lived call takes the only slot

        async def slot_taken() -> bool:
            try:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            except grpc.aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

        await wait_until(slot_taken, within=15, interval=0.05)
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Enqueue(job_service_pb2.EnqueueRequest(kind="k"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await jobs_in(db) == 0
        await holder.call.done_writing()
        await asyncio.wait_for(holder.ended, 10)


def test_defaults_are_sane() -> None:
    s = Settings()
    assert s.payload_max_bytes == 1024 * 1024
    assert s.max_message_bytes > s.payload_max_bytes  # a maximal payload fits in a message
    assert s.max_batch_size == 1000 and s.max_page_size == 1000
    assert s.max_concurrent_rpcs > s.max_lease_streams
    # Clients that ping every 10 s (the SDK, most gRPC stacks' floor) are never told to calm down.
    assert s.keepalive_min_ping_interval <= 10
    assert s.keepalive_time + s.keepalive_timeout <= 60  # a dead peer goes within a minute


def _pinging_channel(port: int, every_ms: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.keepalive_time_ms", every_ms),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )


async def test_clients_pinging_at_the_allowed_interval_keep_their_stream(
    make_server: ServerFactory,
) -> None:
    """Scaled down (1 s for the default 10 s): pings at the allowed rate are fine."""
    srv = await make_server(keepalive_min_ping_interval=1.0)
    async with Proxy(srv.port) as proxy, _pinging_channel(proxy.port, 1000) as ch:
        worker = await RawWorker(ch).open()
        await wait_until(lambda: _at_least(proxy, 4), within=30, interval=0.05)
        assert not worker.ended.done()
        assert proxy.connections == 1  # never told to go away and reconnect
        await worker.call.done_writing()
        assert await asyncio.wait_for(worker.ended, 10) is None


async def test_clients_pinging_too_often_are_disconnected(make_server: ServerFactory) -> None:
    srv = await make_server(keepalive_min_ping_interval=5.0)
    async with Proxy(srv.port) as proxy, _pinging_channel(proxy.port, 100) as ch:
        worker = await RawWorker(ch).open()
        # GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") ends the stream.
        code = await asyncio.wait_for(worker.ended, 30)
        assert code == grpc.StatusCode.UNAVAILABLE


async def test_dead_peers_are_dropped(make_server: ServerFactory) -> None:
    srv = await make_server(keepalive_time=0.5, keepalive_timeout=0.5)
    async with Proxy(srv.port) as proxy, connect(proxy.port) as ch:
        worker = await RawWorker(ch).open()
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        await stub.Enqueue(job_service_pb2.EnqueueRequest(kind="k"))
        await worker.next_job()  # the stream is live and holds a lease
        proxy.frozen.set()  # the peer goes silent: pings are no longer answered
        await asyncio.wait_for(proxy.upstream_closed.wait(), 30)


async def _at_least(proxy: Proxy, pings: int) -> bool:
    return proxy.client_pings >= pings


async def test_a_stream_that_never_opens_is_ended_and_frees_its_slot(
    make_server: ServerFactory,
) -> None:
    """Idle connections that start a Lease and say nothing must not lock real workers out."""
    srv = await make_server(max_lease_streams=1, lease_open_timeout=0.5)
    async with connect(srv.port) as ch:
        idle = wsg.WorkerServiceStub(ch).Lease()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(idle.read(), 10)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error_info(err.value).reason == "OPEN_TIMEOUT"
        # its slot is free again: a real worker gets in and is served
        worker = await RawWorker(ch).open(queues=("after-idle",))
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        await stub.Enqueue(job_service_pb2.EnqueueRequest(kind="k", queue="after-idle"))
        assert (await worker.next_job()).job.queue == "after-idle"
        await worker.call.done_writing()
        await asyncio.wait_for(worker.ended, 10)
