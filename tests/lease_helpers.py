"""A raw Lease-stream driver for protocol tests: what a worker in any language does."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2_grpc as wsg
from tests.support import wait_for_value

T = TypeVar("T")


def duration(secs: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(secs * 1e9))
    return d


class RawWorker:
    """One Lease stream driven by hand; responses are collected by a reader task."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = wsg.WorkerServiceStub(channel).Lease()
        self.jobs: asyncio.Queue[w.LeasedJob] = asyncio.Queue()
        self.other: asyncio.Queue[w.LeaseResponse] = asyncio.Queue()
        self.batches: list[int] = []  # how many jobs each `jobs` message carried
        self.received = 0
        self.error: grpc.aio.AioRpcError | None = None
        self.ended: asyncio.Future[grpc.StatusCode | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._reader: asyncio.Task[None] | None = None

    async def open(
        self,
        *,
        queues: tuple[str, ...] = ("default",),
        max_in_flight: int = 10,
        kinds: tuple[str, ...] = (),
        worker_id: str = "raw",
    ) -> RawWorker:
        first = w.LeaseOpen(
            worker_id=worker_id, queues=queues, kinds=kinds, max_in_flight=max_in_flight
        )
        return await self.start(w.LeaseRequest(open=first))

    async def start(self, first: w.LeaseRequest) -> RawWorker:
        """Sends `first` (normally `open`) and starts reading."""
        await self.call.write(first)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for msg in self.call:
                if msg.WhichOneof("msg") == "jobs":
                    self.batches.append(len(msg.jobs.jobs))
                    self.received += len(msg.jobs.jobs)
                    for j in msg.jobs.jobs:
                        self.jobs.put_nowait(j)
                else:
                    self.other.put_nowait(msg)
            self.ended.set_result(None)
        except grpc.aio.AioRpcError as e:
            self.error = e
            if not self.ended.done():
                self.ended.set_result(e.code())
        except asyncio.CancelledError:
            if not self.ended.done():
                self.ended.set_result(grpc.StatusCode.CANCELLED)

    async def next_job(self, within: float = 10) -> w.LeasedJob:
        return await asyncio.wait_for(self.jobs.get(), within)

    async def next_jobs(self, n: int, within: float = 10) -> list[w.LeasedJob]:
        return [await self.next_job(within) for _ in range(n)]

    async def next_of(self, kind: str, within: float = 10) -> w.LeaseResponse:
        """The next non-job message of `kind`, skipping the others."""

        async def get() -> w.LeaseResponse:
            while True:
                msg = await self.other.get()
                if msg.WhichOneof("msg") == kind:
                    return msg

        return await asyncio.wait_for(get(), within)

    async def send(self, **case: Any) -> None:
        await self.call.write(w.LeaseRequest(**case))

    async def complete(self, *jobs: w.LeasedJob, result: dict[str, Any] | None = None) -> None:
        done = []
        for j in jobs:
            c = w.CompletedJob(job_id=j.job.id, lease_token=j.lease_token)
            if result is not None:
                c.result.update(result)
            done.append(c)
        await self.send(complete=w.LeaseComplete(jobs=done))

    async def fail(
        self,
        *jobs: w.LeasedJob,
        message: str = "boom",
        failure_class: w.FailureClass.ValueType = w.FAILURE_CLASS_RETRY,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        failed = []
        for j in jobs:
            f = w.FailedJob(
                job_id=j.job.id,
                lease_token=j.lease_token,
                error=w.JobError(message=message),
                failure_class=failure_class,
            )
            if details is not None:
                f.error.details.update(details)
            if retry_after is not None:
                f.retry_after.CopyFrom(duration(retry_after))
            failed.append(f)
        await self.send(fail=w.LeaseFail(jobs=failed))

    async def extend(self, *jobs: w.LeasedJob, by: float | None = None) -> None:
        ext = []
        for j in jobs:
            e = w.ExtendedJob(job_id=j.job.id, lease_token=j.lease_token)
            if by is not None:
                e.extend_by.CopyFrom(duration(by))
            ext.append(e)
        await self.send(extend=w.LeaseExtend(jobs=ext))

    async def progress(self, job: w.LeasedJob, progress: dict[str, Any]) -> None:
        p = w.LeaseProgress(job_id=job.job.id, lease_token=job.lease_token)
        p.progress.update(progress)
        await self.send(progress=p)

    async def cancelled(self, *jobs: w.LeasedJob) -> None:
        await self.send(
            cancelled=w.LeaseCancelled(
                jobs=[w.CancelledJob(job_id=j.job.id, lease_token=j.lease_token) for j in jobs]
            )
        )

    async def sync(self, within: float = 10) -> None:
        """Round trip a heartbeat: everything sent before it has been handled by the server."""
        await self.send(heartbeat=w.Heartbeat())
        await self.next_of("heartbeat", within)

    async def drain(self) -> None:
        await self.send(drain=w.LeaseDrain())
        await self.sync()

    async def close(self) -> None:
        await self.call.done_writing()
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self.ended), 10)

    def cancel(self) -> None:
        self.call.cancel()


async def enqueue(channel: grpc.aio.Channel, kind: str = "noop", **kw: Any) -> js.EnqueueResponse:
    resp: js.EnqueueResponse = await jsg.JobServiceStub(channel).Enqueue(
        js.EnqueueRequest(kind=kind, **kw)
    )
    return resp


async def enqueue_many(
    channel: grpc.aio.Channel, n: int, kind: str = "noop", **kw: Any
) -> list[job_pb2.Job]:
    """`n` jobs through EnqueueBatch, 1,000 per call."""
    stub = jsg.JobServiceStub(channel)
    out: list[job_pb2.Job] = []
    for start in range(0, n, 1000):
        reqs = [js.EnqueueRequest(kind=kind, **kw) for _ in range(min(1000, n - start))]
        resp = await stub.EnqueueBatch(js.EnqueueBatchRequest(jobs=reqs))
        out += [r.job for r in resp.results]
    return out


async def get_job(channel: grpc.aio.Channel, job_id: str) -> job_pb2.Job:
    job: job_pb2.Job = (await jsg.JobServiceStub(channel).GetJob(js.GetJobRequest(id=job_id))).job
    return job


async def cancel_job(channel: grpc.aio.Channel, job_id: str) -> js.CancelJobResponse:
    resp: js.CancelJobResponse = await jsg.JobServiceStub(channel).CancelJob(
        js.CancelJobRequest(id=job_id)
    )
    return resp


async def job_in_state(
    channel: grpc.aio.Channel, job_id: str, state: job_pb2.JobState.ValueType, within: float = 10
) -> job_pb2.Job:
    return await wait_for_value(
        lambda: get_job(channel, job_id),
        lambda j: j.state == state,
        within=within,
        what=f"job {job_id} in {job_pb2.JobState.Name(state)}",
    )
