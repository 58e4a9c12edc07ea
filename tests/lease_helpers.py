"""A raw Lease-stream driver for protocol tests: what a worker in any language does."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2_grpc as wsg


class RawWorker:
    """One Lease stream driven by hand; responses are collected by a reader task."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = wsg.WorkerServiceStub(channel).Lease()
        self.jobs: asyncio.Queue[w.LeasedJob] = asyncio.Queue()
        self.other: asyncio.Queue[w.LeaseResponse] = asyncio.Queue()
        self.ended: asyncio.Future[grpc.StatusCode | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._reader: asyncio.Task[None] | None = None

    async def open(self, *, queues: tuple[str, ...] = ("default",), max_in_flight: int = 10,
                   kinds: tuple[str, ...] = (), worker_id: str = "raw") -> RawWorker:
        await self.call.write(w.LeaseRequest(open=w.LeaseOpen(
            worker_id=worker_id, queues=queues, kinds=kinds, max_in_flight=max_in_flight)))
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for msg in self.call:
                if msg.WhichOneof("msg") == "jobs":
                    for j in msg.jobs.jobs:
                        self.jobs.put_nowait(j)
                else:
                    self.other.put_nowait(msg)
            self.ended.set_result(None)
        except grpc.aio.AioRpcError as e:
            if not self.ended.done():
                self.ended.set_result(e.code())

    async def next_job(self, timeout: float = 10) -> w.LeasedJob:
        return await asyncio.wait_for(self.jobs.get(), timeout)

    async def next_of(self, kind: str, timeout: float = 10) -> w.LeaseResponse:
        """The next non-job message of `kind` (skipping heartbeats)."""
        async def get() -> w.LeaseResponse:
            while True:
                msg = await self.other.get()
                if msg.WhichOneof("msg") == kind:
                    return msg
        return await asyncio.wait_for(get(), timeout)

    async def send(self, **case: Any) -> None:
        await self.call.write(w.LeaseRequest(**case))

    async def complete(self, *jobs: w.LeasedJob) -> None:
        await self.send(complete=w.LeaseComplete(jobs=[
            w.CompletedJob(job_id=j.job.id, lease_token=j.lease_token) for j in jobs]))

    async def close(self) -> None:
        await self.call.done_writing()
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self.ended), 10)

    def cancel(self) -> None:
        self.call.cancel()


async def enqueue(channel: grpc.aio.Channel, kind: str = "noop", **kw: Any) -> js.EnqueueResponse:
    resp: js.EnqueueResponse = await jsg.JobServiceStub(channel).Enqueue(
        js.EnqueueRequest(kind=kind, **kw))
    return resp


async def get_job(channel: grpc.aio.Channel, job_id: str) -> Any:
    return (await jsg.JobServiceStub(channel).GetJob(js.GetJobRequest(id=job_id))).job
