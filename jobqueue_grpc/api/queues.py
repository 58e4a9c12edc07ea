"""QueueService: list, get, pause, resume, limits. Validate the name, one store call, convert."""

from __future__ import annotations

from typing import Any

import grpc

from jobqueue_grpc.domain.errors import FieldViolation, NotFound
from jobqueue_grpc.domain.limits import QueueLimits, check_limits
from jobqueue_grpc.domain.records import QueueRecord
from jobqueue_grpc.domain.states import STATES
from jobqueue_grpc.domain.validation import kind_violation, queue_violation, raise_if
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as pb
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as pb_grpc
from jobqueue_grpc.store import Store

Ctx = grpc.aio.ServicerContext[Any, Any]


def queue(
    r: QueueRecord,
    limits: QueueLimits | None = None,
    running_by_key: list[tuple[str, int]] | None = None,
    kind_limits: list[tuple[str, QueueLimits]] | None = None,
) -> pb.Queue:
    out = pb.Queue(
        name=r.name,
        paused=r.paused,
        counts=pb.QueueCounts(**{s.value: n for s, n in r.counts.items()}),
    )
    if r.paused_at is not None:
        out.paused_at.FromDatetime(r.paused_at)
    if limits is not None:
        out.limits.CopyFrom(limits_message(limits))
    for key, n in running_by_key or ():
        out.running_by_key.add(key=key, running=n)
    for kind, lim in kind_limits or ():
        out.kind_limits.add(kind=kind, limits=limits_message(lim))
    return out


def limits_message(lim: QueueLimits) -> pb.QueueLimits:
    return pb.QueueLimits(
        max_running=lim.max_running or 0,
        key_max_running=lim.key_max_running or 0,
        rate=lim.rate or 0.0,
        burst=lim.burst or 0.0,
        key_rate=lim.key_rate or 0.0,
        key_burst=lim.key_burst or 0.0,
        fair_share=lim.fair_share,
    )


def queue_limits(m: pb.QueueLimits, violations: list[FieldViolation] | None = None) -> QueueLimits:
    """The request's limits (0: not set), validated (with the request's other `violations`)."""
    lim = QueueLimits(
        max_running=m.max_running or None,
        key_max_running=m.key_max_running or None,
        rate=m.rate or None,
        burst=m.burst or None,
        key_rate=m.key_rate or None,
        key_burst=m.key_burst or None,
        fair_share=m.fair_share,
    )
    violations = [*(violations or ()), *check_limits(lim)]
    for name in ("max_running", "key_max_running"):
        if getattr(m, name) < 0:
            violations.append(FieldViolation(f"limits.{name}", f"{name} must not be negative"))
    raise_if(violations)
    return lim


def queue_name(name: str) -> str:
    v = queue_violation("name", name)
    raise_if([v] if v else [])
    return name


class QueueService(pb_grpc.QueueServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: Ctx
    ) -> pb.ListQueuesResponse:
        rows = await self.store.queues.list()
        return pb.ListQueuesResponse(
            queues=await self._with_limits(rows, request.include_running_by_key)
        )

    async def GetQueue(self, request: pb.GetQueueRequest, context: Ctx) -> pb.GetQueueResponse:
        row = await self.store.queues.get(queue_name(request.name))
        (out,) = await self._with_limits([row], request.include_running_by_key)
        return pb.GetQueueResponse(queue=out)

    async def SetQueueLimits(
        self, request: pb.SetQueueLimitsRequest, context: Ctx
    ) -> pb.SetQueueLimitsResponse:
        name = queue_name(request.name)
        kind = request.kind or None
        v = kind_violation("kind", request.kind) if kind is not None else None
        await self.store.limits.set(name, queue_limits(request.limits, [v] if v else []), kind)
        try:
            row = await self.store.queues.get(name)
        except NotFound:  # limits set before the queue's first job: it has no counts yet
            row = QueueRecord(name, False, None, {s: 0 for s in STATES})
        (out,) = await self._with_limits([row], True)
        return pb.SetQueueLimitsResponse(queue=out)

    async def _with_limits(self, rows: list[QueueRecord], by_key: bool) -> list[pb.Queue]:
        names = [r.name for r in rows]
        limits = await self.store.limits.get(names)
        kinds = await self.store.limits.get_kinds(names)
        running = (
            await self.store.limits.running_by_key(names) if by_key and (limits or kinds) else {}
        )
        return [queue(r, limits.get(r.name), running.get(r.name), kinds.get(r.name)) for r in rows]

    async def PauseQueue(
        self, request: pb.PauseQueueRequest, context: Ctx
    ) -> pb.PauseQueueResponse:
        row = await self.store.queues.pause(queue_name(request.name))
        return pb.PauseQueueResponse(queue=queue(row))

    async def ResumeQueue(
        self, request: pb.ResumeQueueRequest, context: Ctx
    ) -> pb.ResumeQueueResponse:
        row = await self.store.queues.resume(queue_name(request.name))
        return pb.ResumeQueueResponse(queue=queue(row))
