"""QueueService: list, get, pause, resume. Validate the name, one store call, convert."""

from __future__ import annotations

from typing import Any

import grpc

from jobqueue_grpc.domain.records import QueueRecord
from jobqueue_grpc.domain.validation import queue_violation, raise_if
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as pb
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as pb_grpc
from jobqueue_grpc.store import Store

Ctx = grpc.aio.ServicerContext[Any, Any]


def queue(r: QueueRecord) -> pb.Queue:
    out = pb.Queue(
        name=r.name,
        paused=r.paused,
        counts=pb.QueueCounts(**{s.value: n for s, n in r.counts.items()}),
    )
    if r.paused_at is not None:
        out.paused_at.FromDatetime(r.paused_at)
    return out


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
        return pb.ListQueuesResponse(queues=[queue(r) for r in await self.store.queues.list()])

    async def GetQueue(self, request: pb.GetQueueRequest, context: Ctx) -> pb.GetQueueResponse:
        row = await self.store.queues.get(queue_name(request.name))
        return pb.GetQueueResponse(queue=queue(row))

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
