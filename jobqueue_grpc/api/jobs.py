"""JobService: enqueue, get, list, cancel. Each method: validate, one store call, convert."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from jobqueue_grpc import metrics
from jobqueue_grpc.api import convert
from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain import pagination
from jobqueue_grpc.domain.errors import FieldViolation, InvalidArgument
from jobqueue_grpc.domain.jobs import Limits, NewJob
from jobqueue_grpc.domain.metadata import TraceContext, from_headers, metadata_violations
from jobqueue_grpc.domain.records import JobRecord
from jobqueue_grpc.domain.states import CancelOutcome, JobState, cancellable_states
from jobqueue_grpc.domain.validation import kind_violation, parse_uuid, queue_violation, raise_if
from jobqueue_grpc.engine.enqueue import Enqueuer
from jobqueue_grpc.engine.watches import Watches
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2, job_service_pb2_grpc
from jobqueue_grpc.store import Store

Ctx = grpc.aio.ServicerContext[Any, Any]

_OUTCOME = {
    CancelOutcome.CANCELLED: job_service_pb2.CANCEL_OUTCOME_CANCELLED,
    CancelOutcome.CANCEL_REQUESTED: job_service_pb2.CANCEL_OUTCOME_CANCEL_REQUESTED,
}


def limits_of(settings: Settings) -> Limits:
    return Limits(
        payload_max_bytes=settings.payload_max_bytes,
        default_max_attempts=settings.default_max_attempts,
        default_lease_seconds=settings.lease_duration,
    )


def page_size(requested: int, settings: Settings) -> int:
    if requested < 0 or requested > settings.max_page_size:
        raise_if([FieldViolation("page_size", f"page_size must be 0..{settings.max_page_size}")])
    return requested or settings.default_page_size


class JobService(job_service_pb2_grpc.JobServiceServicer):
    def __init__(
        self, store: Store, enqueuer: Enqueuer, settings: Settings, watches: Watches
    ) -> None:
        self.store = store
        self.enqueuer = enqueuer
        self.watches = watches
        self.settings = settings
        self.limits = limits_of(settings)

    async def Enqueue(
        self, request: job_service_pb2.EnqueueRequest, context: Ctx
    ) -> job_service_pb2.EnqueueResponse:
        new = convert.new_job(request, "", self.limits, from_headers(context.invocation_metadata()))
        if new.unique is not None:
            [(row, created)] = await self.enqueuer.enqueue_unique([new])
        else:
            row, created = await self.enqueuer.enqueue(new)
        return job_service_pb2.EnqueueResponse(job=convert.job(row), created=created)

    async def EnqueueBatch(
        self, request: job_service_pb2.EnqueueBatchRequest, context: Ctx
    ) -> job_service_pb2.EnqueueBatchResponse:
        n = len(request.jobs)
        if n == 0 or n > self.settings.max_batch_size:
            raise_if(
                [FieldViolation("jobs", f"a batch holds 1..{self.settings.max_batch_size} jobs")],
                "bad batch size",
            )
        trace = from_headers(context.invocation_metadata())  # for every job that sets none
        if convert.has_unique(request.jobs):
            return await self._enqueue_unique_batch(request, trace)
        jobs = convert.new_jobs(request.jobs, self.limits, trace)
        out = await self.enqueuer.enqueue_batch(jobs)
        return convert.enqueue_batch_response(request.jobs, jobs, out.created, out.at, out.existing)

    async def _enqueue_unique_batch(
        self, request: job_service_pb2.EnqueueBatchRequest, trace: TraceContext
    ) -> job_service_pb2.EnqueueBatchResponse:
        """A batch with unique jobs: all or nothing too, in one transaction (insert_unique)."""
        jobs: list[NewJob] = []
        violations: list[FieldViolation] = []
        for i, req in enumerate(request.jobs):
            try:
                jobs.append(convert.new_job(req, f"jobs[{i}].", self.limits, trace))
            except InvalidArgument as err:
                violations.extend(err.violations)
        raise_if(violations, "batch rejected, nothing enqueued")
        out = await self.enqueuer.enqueue_unique(jobs)
        return job_service_pb2.EnqueueBatchResponse(
            results=[
                job_service_pb2.EnqueueBatchResult(job=convert.job(row), created=created)
                for row, created in out
            ]
        )

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Ctx
    ) -> job_service_pb2.GetJobResponse:
        row = await self.store.jobs.get(parse_uuid("id", request.id))
        out = convert.job(row)
        if row.state == JobState.QUEUED:  # flow control: what holds it, if anything
            out.held_reason = await self.store.limits.held_reason(
                row.queue, row.concurrency_key, row.kind
            )
        return job_service_pb2.GetJobResponse(job=out)

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Ctx
    ) -> job_service_pb2.ListJobsResponse:
        _check_filters(request)
        before = None
        if request.HasField("created_before"):
            before = convert.to_datetime("created_before", request.created_before)
        limit = page_size(request.page_size, self.settings)
        state = convert.STATE_FROM_PROTO.get(request.state)
        labels = convert.metadata_json(dict(sorted(request.metadata.items())))
        filters: tuple[object, ...] = (request.queue, request.kind, request.state)
        if labels is not None:  # tokens of unlabelled lists stay as they were
            filters += (labels,)
        if before is not None:  # a token is good for the filters it was made with only
            filters += (before.isoformat(),)
        secret = await self.store.page_token_key()
        after = pagination.decode(request.page_token, filters, secret)
        rows = await self.store.jobs.list(
            queue=request.queue or None,
            kind=request.kind or None,
            state=state,
            after=after[1] if after else None,
            limit=limit + 1,
            metadata=labels,
            created_before=before,
        )
        token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            token = pagination.encode(None, rows[-1].id, filters, secret)
        return job_service_pb2.ListJobsResponse(
            jobs=[convert.job(r) for r in rows], next_page_token=token
        )

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Ctx
    ) -> job_service_pb2.CancelJobResponse:
        row, outcome = await self.store.jobs.cancel(parse_uuid("id", request.id))
        if outcome is CancelOutcome.CANCELLED:  # committed; CANCEL_REQUESTED ends in the engine
            metrics.cancelled(row.queue, row.kind)
        return job_service_pb2.CancelJobResponse(job=convert.job(row), outcome=_OUTCOME[outcome])

    async def CancelJobs(
        self, request: job_service_pb2.CancelJobsRequest, context: Ctx
    ) -> job_service_pb2.CancelJobsResponse:
        violations = [
            v
            for v in (
                request.queue and queue_violation("queue", request.queue),
                request.kind and kind_violation("kind", request.kind),
            )
            if v
        ]
        if request.state and request.state not in convert.STATE_FROM_PROTO:
            violations.append(FieldViolation("state", f"unknown state {request.state}"))
        before = None
        if request.HasField("created_before"):
            before = convert.to_datetime("created_before", request.created_before)
        if not (request.queue or request.kind or request.state or before):
            violations.append(
                FieldViolation(
                    "queue", "name at least one filter: queue, kind, state or created_before"
                )
            )
        raise_if(violations)
        state = convert.STATE_FROM_PROTO.get(request.state)
        counts = await self.store.jobs.cancel_many(
            queue=request.queue or None,
            kind=request.kind or None,
            states=cancellable_states(state),
            created_before=before,
            dry_run=request.dry_run,
        )
        for (queue, kind), n in counts.by_queue_kind.items():
            metrics.cancelled(queue, kind, n)
        return job_service_pb2.CancelJobsResponse(
            matched=counts.matched,
            cancelled=counts.cancelled,
            cancel_requested=counts.cancel_requested,
        )

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Ctx
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        job_id = parse_uuid("id", request.id)
        row = await self.store.jobs.get(job_id)
        if JobState(row.state).terminal:
            yield job_service_pb2.WatchJobResponse(job=convert.job(row))
            return
        async with self.watches.watch(context.peer(), frozenset({job_id})) as w:
            row = await self.store.jobs.get(job_id)  # read again: now changes are announced
            yield job_service_pb2.WatchJobResponse(job=convert.job(row))
            while not JobState(row.state).terminal:
                await w.next()
                new = await self.store.jobs.get(job_id)
                if _seen(new) != _seen(row):
                    yield job_service_pb2.WatchJobResponse(job=convert.job(new))
                row = new

    async def WatchJobs(
        self, request: job_service_pb2.WatchJobsRequest, context: Ctx
    ) -> AsyncIterator[job_service_pb2.WatchJobsResponse]:
        _check_filters(request)
        queue, kind = request.queue, request.kind
        async with self.watches.watch(context.peer(), None) as w:
            yield job_service_pb2.WatchJobsResponse()  # watching from now on: list now
            while True:
                ids, everything = await w.next()
                if everything:
                    yield job_service_pb2.WatchJobsResponse(resync=True)
                    continue
                rows = await self.store.watch.jobs(ids)
                jobs = [
                    convert.job(r)
                    for r in sorted(rows, key=lambda r: r.id)
                    if (not queue or r.queue == queue) and (not kind or r.kind == kind)
                ]
                if jobs:
                    yield job_service_pb2.WatchJobsResponse(jobs=jobs)


def _seen(row: JobRecord) -> tuple[Any, ...]:
    """What a watcher of one job is shown a change of."""
    return (row.state, row.attempt, row.progress, row.result, row.cancel_requested, row.errors)


def _check_filters(
    request: job_service_pb2.ListJobsRequest | job_service_pb2.WatchJobsRequest,
) -> None:
    violations = [
        v
        for v in (
            request.queue and queue_violation("queue", request.queue),
            request.kind and kind_violation("kind", request.kind),
        )
        if v
    ]
    if isinstance(request, job_service_pb2.ListJobsRequest) and (
        request.state and request.state not in convert.STATE_FROM_PROTO
    ):
        violations.append(FieldViolation("state", f"unknown state {request.state}"))
    if isinstance(request, job_service_pb2.ListJobsRequest) and request.metadata:
        violations += metadata_violations("metadata", request.metadata)
    raise_if(violations)
