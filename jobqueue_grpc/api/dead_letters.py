"""DeadLetterService: list, get, stats, requeue, delete, purge; validate, store call, convert."""

from __future__ import annotations

from typing import Any

import grpc

from jobqueue_grpc.api import convert
from jobqueue_grpc.api.jobs import page_size
from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain import pagination
from jobqueue_grpc.domain.errors import FieldViolation
from jobqueue_grpc.domain.records import DeadLetterRecord
from jobqueue_grpc.domain.validation import kind_violation, parse_uuid, queue_violation, raise_if
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2 as pb
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2_grpc as pb_grpc
from jobqueue_grpc.store import Store
from jobqueue_grpc.store.dead_letters import DeadLetterFilter

Ctx = grpc.aio.ServicerContext[Any, Any]


def dead_letter(r: DeadLetterRecord) -> pb.DeadLetter:
    d = pb.DeadLetter(
        job_id=str(r.job_id),
        queue=r.queue,
        kind=r.kind,
        priority=r.priority,
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        idempotency_key=r.idempotency_key or "",
    )
    convert.json_to_struct(r.payload, d.payload)
    d.failed_at.FromDatetime(r.failed_at)
    d.created_at.FromDatetime(r.created_at)
    errs = convert.errors_list(r.errors)
    if errs:
        d.errors.extend(errs)
        d.last_error.CopyFrom(errs[-1])
    return d


def dead_letter_filter(f: pb.DeadLetterFilter) -> DeadLetterFilter:
    violations = [
        v
        for v in (
            f.queue and queue_violation("filter.queue", f.queue),
            f.kind and kind_violation("filter.kind", f.kind),
        )
        if v
    ]
    raise_if(violations)
    before = (
        convert.to_datetime("filter.failed_before", f.failed_before)
        if f.HasField("failed_before")
        else None
    )
    after = (
        convert.to_datetime("filter.failed_after", f.failed_after)
        if f.HasField("failed_after")
        else None
    )
    return DeadLetterFilter(f.queue or None, f.kind or None, before, after)


def bulk_limit(limit: int) -> int | None:
    if limit < 0:
        raise_if([FieldViolation("limit", "limit must be >= 0 (0 means every match)")])
    return limit or None


class DeadLetterService(pb_grpc.DeadLetterServiceServicer):
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Ctx
    ) -> pb.ListDeadLettersResponse:
        f = dead_letter_filter(request.filter)
        limit = page_size(request.page_size, self.settings)
        fingerprint = tuple(x.isoformat() if x else None for x in (f.failed_before, f.failed_after))
        filters = ("dead_letters", f.queue, f.kind, *fingerprint)
        secret = await self.store.page_token_key()
        cursor = pagination.decode(request.page_token, filters, secret)
        after = None
        if cursor is not None:
            at, job_id = cursor
            if at is None:  # a ListJobs token (its filters would not match either)
                raise pagination.not_issued()
            after = (at, job_id)
        rows = await self.store.dead_letters.list(f, after=after, limit=limit + 1)
        token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            token = pagination.encode(rows[-1].failed_at, rows[-1].job_id, filters, secret)
        return pb.ListDeadLettersResponse(
            dead_letters=[dead_letter(r) for r in rows], next_page_token=token
        )

    async def GetDeadLetter(
        self, request: pb.GetDeadLetterRequest, context: Ctx
    ) -> pb.GetDeadLetterResponse:
        row = await self.store.dead_letters.get(parse_uuid("job_id", request.job_id))
        return pb.GetDeadLetterResponse(dead_letter=dead_letter(row))

    async def GetDeadLetterStats(
        self, request: pb.GetDeadLetterStatsRequest, context: Ctx
    ) -> pb.GetDeadLetterStatsResponse:
        s = await self.store.dead_letters.stats(dead_letter_filter(request.filter))
        out = pb.GetDeadLetterStatsResponse(
            total=s.total,
            by_queue=[pb.NameCount(name=n, count=c) for n, c in s.by_queue],
            by_kind=[pb.NameCount(name=n, count=c) for n, c in s.by_kind],
        )
        if s.oldest is not None:
            out.oldest_failed_at.FromDatetime(s.oldest)
        if s.newest is not None:
            out.newest_failed_at.FromDatetime(s.newest)
        return out

    async def RequeueDeadLetter(
        self, request: pb.RequeueDeadLetterRequest, context: Ctx
    ) -> pb.RequeueDeadLetterResponse:
        row = await self.store.dead_letters.requeue(parse_uuid("job_id", request.job_id))
        return pb.RequeueDeadLetterResponse(job=convert.job(row))

    async def RequeueDeadLetters(
        self, request: pb.RequeueDeadLettersRequest, context: Ctx
    ) -> pb.RequeueDeadLettersResponse:
        f = dead_letter_filter(request.filter)
        limit = bulk_limit(request.limit)
        dl = self.store.dead_letters
        n = await dl.count(f, limit) if request.dry_run else await dl.requeue_many(f, limit)
        return pb.RequeueDeadLettersResponse(count=n, dry_run=request.dry_run)

    async def DeleteDeadLetter(
        self, request: pb.DeleteDeadLetterRequest, context: Ctx
    ) -> pb.DeleteDeadLetterResponse:
        await self.store.dead_letters.delete(parse_uuid("job_id", request.job_id))
        return pb.DeleteDeadLetterResponse()

    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest, context: Ctx
    ) -> pb.PurgeDeadLettersResponse:
        f = dead_letter_filter(request.filter)
        limit = bulk_limit(request.limit)
        dl = self.store.dead_letters
        n = await dl.count(f, limit) if request.dry_run else await dl.purge(f, limit)
        return pb.PurgeDeadLettersResponse(count=n, dry_run=request.dry_run)
