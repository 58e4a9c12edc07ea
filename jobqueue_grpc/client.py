"""JobService clients: `AsyncClient` (asyncio) and `Client` (blocking), the same methods.

client = AsyncClient("localhost:50051")
r = await client.enqueue("send_email", {"to": "a@example.com"}, idempotency_key="welcome-42")
r.job.id, r.created
job = await client.wait(r.job.id)   # returns once the job is SUCCEEDED, FAILED or CANCELLED
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import grpc

from jobqueue_grpc._channel import TLS, aio_channel, metadata, sync_channel
from jobqueue_grpc._durations import duration
from jobqueue_grpc._trace import with_trace
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg

Job = job_pb2.Job
JobState = job_pb2.JobState
EnqueueResponse = js.EnqueueResponse
CancelJobResponse = js.CancelJobResponse

__all__ = ["TERMINAL", "TLS", "AsyncClient", "Client", "Job", "enqueue_request"]

TERMINAL = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)


# A watch that ends with one of these is started again by `wait` (a replica draining, a blip).
_RETRY_WATCH = frozenset({grpc.StatusCode.UNAVAILABLE})


def enqueue_request(
    kind: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str = "",
    priority: int = 0,
    max_attempts: int = 0,
    run_at: datetime | None = None,
    idempotency_key: str = "",
    lease_duration: float | None = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
    metadata: Mapping[str, str] | None = None,
    traceparent: str = "",
    tracestate: str = "",
    concurrency_key: str = "",
) -> js.EnqueueRequest:
    """An EnqueueRequest; `run_at` must be timezone-aware, durations are seconds. `metadata`:
    labels (ListJobs filters on them). `traceparent`/`tracestate` set the job's W3C trace
    context explicitly; left empty, the server takes the call's (the client sends the current
    OpenTelemetry span's, if any). `concurrency_key`: the key a queue's flow control limits per
    key (e.g. a tenant id)."""
    req = js.EnqueueRequest(
        kind=kind,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        metadata=metadata,
        traceparent=traceparent,
        tracestate=tracestate,
        concurrency_key=concurrency_key,
    )
    if payload:
        req.payload.update(payload)
    if run_at is not None:
        if run_at.tzinfo is None:
            raise ValueError("run_at must be timezone-aware")
        req.run_at.FromDatetime(run_at)
    if lease_duration is not None:
        req.lease_duration.CopyFrom(duration(lease_duration))
    if backoff_base is not None:
        req.retry_policy.backoff_base.CopyFrom(duration(backoff_base))
    if backoff_cap is not None:
        req.retry_policy.backoff_cap.CopyFrom(duration(backoff_cap))
    return req


def _batch(jobs: Sequence[js.EnqueueRequest | Mapping[str, Any]]) -> js.EnqueueBatchRequest:
    return js.EnqueueBatchRequest(
        jobs=[j if isinstance(j, js.EnqueueRequest) else enqueue_request(**j) for j in jobs]
    )


def _list(
    queue: str,
    kind: str,
    state: int,
    page_size: int,
    page_token: str,
    metadata: Mapping[str, str] | None = None,
) -> js.ListJobsRequest:
    return js.ListJobsRequest(
        queue=queue,
        kind=kind,
        state=state,  # type: ignore[arg-type]
        page_size=page_size,
        page_token=page_token,
        metadata=metadata,
    )


class AsyncClient:
    """JobService over grpc.aio. `token` is sent as a bearer token; `tls` turns TLS on."""

    def __init__(
        self, address: str = "localhost:50051", *, token: str | None = None, tls: TLS | None = None
    ) -> None:
        self.channel = aio_channel(address, tls)
        self._stub = jsg.JobServiceStub(self.channel)
        self._md = metadata(token)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def enqueue(
        self, kind: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> js.EnqueueResponse:
        """Options: queue, priority, max_attempts, run_at, idempotency_key, lease_duration,
        backoff_base, backoff_cap, metadata, traceparent, tracestate, concurrency_key."""
        req = enqueue_request(kind, payload, **options)
        resp: js.EnqueueResponse = await self._stub.Enqueue(req, metadata=with_trace(self._md))
        return resp

    async def enqueue_batch(
        self, jobs: Sequence[js.EnqueueRequest | Mapping[str, Any]]
    ) -> list[js.EnqueueBatchResult]:
        """All or nothing; each mapping holds enqueue() arguments (kind, payload, ...)."""
        resp = await self._stub.EnqueueBatch(_batch(jobs), metadata=with_trace(self._md))
        return list(resp.results)

    async def get_job(self, job_id: str) -> Job:
        resp = await self._stub.GetJob(js.GetJobRequest(id=job_id), metadata=self._md)
        return resp.job

    async def list_jobs(
        self,
        *,
        queue: str = "",
        kind: str = "",
        state: int = 0,
        page_size: int = 0,
        page_token: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> js.ListJobsResponse:
        req = _list(queue, kind, state, page_size, page_token, metadata)
        resp: js.ListJobsResponse = await self._stub.ListJobs(req, metadata=self._md)
        return resp

    async def iter_jobs(
        self, *, queue: str = "", kind: str = "", state: int = 0
    ) -> AsyncIterator[Job]:
        """Every matching job, newest first, page by page."""
        token = ""
        while True:
            page = await self.list_jobs(queue=queue, kind=kind, state=state, page_token=token)
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if not token:
                return

    async def cancel_job(self, job_id: str) -> js.CancelJobResponse:
        resp: js.CancelJobResponse = await self._stub.CancelJob(
            js.CancelJobRequest(id=job_id), metadata=self._md
        )
        return resp

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then again on every change (state, attempt, progress, result), ending
        with its terminal state (WatchJob: the server pushes; nothing polls)."""
        call = self._stub.WatchJob(js.WatchJobRequest(id=job_id), metadata=self._md)
        async for resp in call:
            yield resp.job

    async def wait(self, job_id: str) -> Job:
        """The job once it is SUCCEEDED, FAILED or CANCELLED. A stream cut short (a server
        draining, say) is watched again. Bound it with `asyncio.timeout(...)`."""
        while True:
            last: Job | None = None
            try:
                async for job in self.watch(job_id):
                    last = job
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRY_WATCH:
                    raise
                await asyncio.sleep(0.5)  # back off before trying another replica
                continue
            if last is not None and last.state in TERMINAL:
                return last


class Client:
    """The blocking twin of AsyncClient, for scripts and threads."""

    def __init__(
        self, address: str = "localhost:50051", *, token: str | None = None, tls: TLS | None = None
    ) -> None:
        self.channel = sync_channel(address, tls)
        self._stub = jsg.JobServiceStub(self.channel)
        self._md = metadata(token)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def enqueue(
        self, kind: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> js.EnqueueResponse:
        req = enqueue_request(kind, payload, **options)
        return self._stub.Enqueue(req, metadata=with_trace(self._md))

    def enqueue_batch(
        self, jobs: Sequence[js.EnqueueRequest | Mapping[str, Any]]
    ) -> list[js.EnqueueBatchResult]:
        resp = self._stub.EnqueueBatch(_batch(jobs), metadata=with_trace(self._md))
        return list(resp.results)

    def get_job(self, job_id: str) -> Job:
        return self._stub.GetJob(js.GetJobRequest(id=job_id), metadata=self._md).job

    def list_jobs(
        self,
        *,
        queue: str = "",
        kind: str = "",
        state: int = 0,
        page_size: int = 0,
        page_token: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> js.ListJobsResponse:
        req = _list(queue, kind, state, page_size, page_token, metadata)
        return self._stub.ListJobs(req, metadata=self._md)

    def iter_jobs(self, *, queue: str = "", kind: str = "", state: int = 0) -> Iterator[Job]:
        token = ""
        while True:
            page = self.list_jobs(queue=queue, kind=kind, state=state, page_token=token)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def cancel_job(self, job_id: str) -> js.CancelJobResponse:
        return self._stub.CancelJob(js.CancelJobRequest(id=job_id), metadata=self._md)

    def watch(self, job_id: str) -> Iterator[Job]:
        """The job now, then again on every change, ending with its terminal state."""
        for resp in self._stub.WatchJob(js.WatchJobRequest(id=job_id), metadata=self._md):
            yield resp.job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it is SUCCEEDED, FAILED or CANCELLED; `timeout` seconds in all (then
        grpc.RpcError DEADLINE_EXCEEDED). A stream cut short by a draining server is watched
        again."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            last: Job | None = None
            call = self._stub.WatchJob(
                js.WatchJobRequest(id=job_id), metadata=self._md, timeout=left
            )
            try:
                for resp in call:
                    last = resp.job
            except grpc.RpcError as exc:
                if exc.code() not in _RETRY_WATCH:
                    raise
                time.sleep(0.5)  # back off before trying another replica
                continue
            if last is not None and last.state in TERMINAL:
                return last
