"""Graceful shutdown: new calls are refused with UNAVAILABLE (DRAINING) while streams that are
already open get `draining` and still have their outcomes accepted for the grace period."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.server import JobQueueServer
from tests.lease_helpers import RawWorker, enqueue, get_job
from tests.support import error_info


def _reason(err: grpc.aio.AioRpcError) -> str:
    return error_info(err).reason


async def test_draining_refuses_new_calls_and_accepts_outcomes(
    make_server: Callable[..., Awaitable[JobQueueServer]],
) -> None:
    srv = await make_server(grace_period=30.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        worker = await RawWorker(channel).open()
        job = (await enqueue(channel, "long")).job
        leased = await worker.next_job()

        stopping = asyncio.create_task(srv.stop())
        await worker.next_of("draining")  # the stream is told first

        try:
            await enqueue(channel, "late")
            raise AssertionError("Enqueue succeeded on a draining server")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert _reason(err) == "DRAINING"

        await worker.complete(leased)  # within the grace period: accepted
        await asyncio.wait_for(stopping, 30)  # drained as soon as nothing is in flight
        await worker.close()

    # the server is gone; read the outcome through a fresh one over the same database
    other = await make_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
        done = await get_job(channel, job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
