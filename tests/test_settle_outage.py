"""Outcomes that arrive while the database is away are recorded once it is back, not dropped
(dropped, their jobs would run again after their leases expired). The engine's store seam
(engine/ports.py) lets a test fail the settle statements exactly as a lost connection does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc

from jobqueue_grpc.domain.records import Settled
from jobqueue_grpc.engine.ports import LeasePort
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store.errors import database_unavailable
from tests.lease_helpers import RawWorker, enqueue, job_in_state


class Outage:
    """The real LeasePort, whose settle fails `times` times first (as the store does while
    PostgreSQL restarts); `back` is set when it lets the statements through again."""

    def __init__(self, real: LeasePort, times: int) -> None:
        self.real = real
        self.left = times
        self.calls = 0
        self.back = asyncio.Event()

    async def settle(self, *args: Sequence[Any]) -> Settled:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise database_unavailable()
        self.back.set()
        return await self.real.settle(*args)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_outcomes_are_recorded_once_the_database_is_back(
    server: JobQueueServer, channel: grpc.aio.Channel
) -> None:
    settler = server.engine.settler
    outage = Outage(settler.leases, times=3)
    settler.leases = outage
    worker = await RawWorker(channel).open(queues=("outage",))
    try:
        job = (await enqueue(channel, queue="outage")).job
        leased = await worker.next_job()
        await worker.complete(leased)
        await asyncio.wait_for(outage.back.wait(), 20)
        done = await job_in_state(channel, job.id, job_pb2.JOB_STATE_SUCCEEDED)
        assert done.attempt == 1  # recorded, not run again
        assert outage.calls == 4
        assert worker.other.empty()  # no UNRECORDED (nor any other) rejection
    finally:
        settler.leases = outage.real
        worker.cancel()
