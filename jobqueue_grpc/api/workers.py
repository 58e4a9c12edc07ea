"""WorkerService.Lease: validates `open`, then hands the stream to the dispatcher.

The dispatcher (dispatch/dispatcher.py) holds the protocol's state; this servicer only reads
requests in and writes the stream's outbox out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from jobqueue_grpc._aio import within
from jobqueue_grpc.config import Settings
from jobqueue_grpc.dispatch.dispatcher import HEARTBEAT_EVERY, Dispatcher, Stream
from jobqueue_grpc.domain.errors import FieldViolation, InvalidArgument
from jobqueue_grpc.domain.validation import DEFAULT_QUEUE, kind_violation, queue_violation, raise_if
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2_grpc

Ctx = grpc.aio.ServicerContext[w.LeaseRequest, w.LeaseResponse]

DEFAULT_MAX_IN_FLIGHT = 10
MAX_QUEUES = 64
MAX_KINDS = 256
_closing: set[asyncio.Task[None]] = set()  # stream releases in flight (strong references)


def check_open(o: w.LeaseOpen, cap: int) -> tuple[str, list[str], list[str] | None, int]:
    """(worker_id, queues, kinds, max_in_flight) of a valid `open`; INVALID_ARGUMENT otherwise."""
    v: list[FieldViolation | None] = []
    queues = list(o.queues) or [DEFAULT_QUEUE]
    kinds = list(o.kinds) or None
    if len(queues) > MAX_QUEUES:
        v.append(FieldViolation("open.queues", f"at most {MAX_QUEUES} queues"))
    if kinds and len(kinds) > MAX_KINDS:
        v.append(FieldViolation("open.kinds", f"at most {MAX_KINDS} kinds"))
    v += [queue_violation(f"open.queues[{i}]", q) for i, q in enumerate(queues[:MAX_QUEUES])]
    v += [kind_violation(f"open.kinds[{i}]", k) for i, k in enumerate((kinds or [])[:MAX_KINDS])]
    if not 0 <= o.max_in_flight <= cap:
        v.append(FieldViolation("open.max_in_flight", f"max_in_flight must be 0..{cap}"))
    if len(o.worker_id) > 128 or not o.worker_id.isprintable():
        v.append(FieldViolation("open.worker_id", "worker_id must be printable, at most 128"))
    raise_if([x for x in v if x is not None], "bad open")
    return (
        o.worker_id or "anonymous",
        queues,
        kinds,
        o.max_in_flight or min(DEFAULT_MAX_IN_FLIGHT, cap),
    )


class WorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, dispatcher: Dispatcher, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.settings = settings

    async def Lease(  # type: ignore[override]
        self, request_iterator: AsyncIterator[w.LeaseRequest], context: Ctx
    ) -> None:
        requests = aiter(request_iterator)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if first.WhichOneof("msg") != "open":
            raise InvalidArgument(
                "the first message on a Lease stream must be `open`",
                [FieldViolation("open", "send `open` first")],
                reason="PROTOCOL_VIOLATION",
            )
        worker_id, queues, kinds, max_in_flight = check_open(
            first.open, self.settings.max_in_flight
        )
        stream = self.dispatcher.open_stream(worker_id, queues, kinds, max_in_flight)
        writer = asyncio.create_task(_write(stream, context), name=f"lease-writer-{worker_id}")
        try:
            async for req in requests:
                await self.dispatcher.handle(stream, req)
        finally:
            # A client's cancel ends the request iterator and then cancels this task, often while
            # the release runs: shielded, the stream's jobs are released whatever happens here.
            closing = asyncio.create_task(self.dispatcher.close_stream(stream))
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)
            try:
                await asyncio.shield(closing)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer


async def _write(stream: Stream, context: Ctx) -> None:
    """Sends the stream's outbox; a heartbeat when it has been quiet for a while."""
    while True:
        try:
            msg = stream.outbox.get_nowait()
        except asyncio.QueueEmpty:
            try:
                msg = await within(stream.outbox.get(), HEARTBEAT_EVERY)
            except TimeoutError:
                msg = w.LeaseResponse(heartbeat=w.Heartbeat())
        if msg is None:
            return
        await context.write(msg)
