"""WorkerService.Lease: the wire of the worker protocol.

Validates `open`, then turns each LeaseRequest into the engine's plain values (engine/events.py)
and each value the engine sends back into a LeaseResponse. All protocol state is the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import grpc

from jobqueue_grpc._aio import within
from jobqueue_grpc._durations import duration, seconds
from jobqueue_grpc.api import convert
from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain.errors import DeadlineExceeded, FieldViolation, InvalidArgument
from jobqueue_grpc.domain.retry import FailureClass
from jobqueue_grpc.domain.validation import DEFAULT_QUEUE, kind_violation, queue_violation, raise_if
from jobqueue_grpc.engine import events as ev
from jobqueue_grpc.engine.engine import HEARTBEAT_EVERY, Engine
from jobqueue_grpc.engine.streams import Stream
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2_grpc

Ctx = grpc.aio.ServicerContext[w.LeaseRequest, w.LeaseResponse]

DEFAULT_MAX_IN_FLIGHT = 10
MAX_QUEUES = 64
MAX_KINDS = 256
WRITER_GRACE = 5.0  # seconds the writer gets to finish sending when the stream ends
_closing: set[asyncio.Task[None]] = set()  # stream releases in flight (strong references)

REJECT_CODES = {
    ev.RejectCode.STALE: w.REJECT_REASON_STALE_LEASE,
    ev.RejectCode.UNKNOWN: w.REJECT_REASON_UNKNOWN_JOB,
    ev.RejectCode.INVALID: w.REJECT_REASON_INVALID,
    ev.RejectCode.UNRECORDED: w.REJECT_REASON_UNSPECIFIED,
}
FAILURE_CLASSES = {
    w.FAILURE_CLASS_DO_NOT_RETRY: FailureClass.DO_NOT_RETRY,
    w.FAILURE_CLASS_RETRY_AFTER: FailureClass.RETRY_AFTER,
}


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
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    async def Lease(  # type: ignore[override]
        self, request_iterator: AsyncIterator[w.LeaseRequest], context: Ctx
    ) -> None:
        requests = aiter(request_iterator)
        wait_for_open = self.settings.lease_open_timeout
        try:
            first = await within(anext(requests), wait_for_open)
        except StopAsyncIteration:
            return
        except TimeoutError:  # an idle connection must not hold a stream slot for good
            raise DeadlineExceeded(
                f"no `open` within {wait_for_open:g} s of the stream starting",
                reason="OPEN_TIMEOUT",
            ) from None
        if first.WhichOneof("msg") != "open":
            raise InvalidArgument(
                "the first message on a Lease stream must be `open`",
                [FieldViolation("open", "send `open` first")],
                reason="PROTOCOL_VIOLATION",
            )
        worker_id, queues, kinds, max_in_flight = check_open(
            first.open, self.settings.max_in_flight
        )
        engine = self.engine
        stream = engine.open_stream(worker_id, queues, kinds, max_in_flight)
        writer = asyncio.create_task(_write(stream, context), name=f"lease-writer-{worker_id}")
        try:
            async for req in requests:
                await handle(engine, stream, req)
        finally:
            # A client's cancel ends the request iterator and then cancels this task, often while
            # the release runs: shielded, the stream's jobs are released whatever happens here.
            closing = asyncio.create_task(engine.close_stream(stream))
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)
            try:
                await asyncio.shield(closing)
            finally:
                # Let the writer finish the message it is sending before the call ends: a status
                # sent while a message is still being written is refused by gRPC core, and the
                # client would never hear why its stream ended (a refused second `open`, say).
                stream.close()
                try:
                    await asyncio.wait({writer}, timeout=WRITER_GRACE)
                finally:
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await writer


# -- requests in ---------------------------------------------------------------------------------
async def handle(engine: Engine, s: Stream, req: w.LeaseRequest) -> None:
    """One LeaseRequest after `open`, decoded and handed to the engine's room for it."""
    intake = engine.intake
    intake.heard(s)
    which = req.WhichOneof("msg")
    if which == "complete":
        intake.complete(s, [_completion(c) for c in req.complete.jobs])
    elif which == "fail":
        intake.fail(s, [_failure(f) for f in req.fail.jobs])
    elif which == "cancelled":
        intake.cancelled(s, [ev.Held(c.job_id, c.lease_token) for c in req.cancelled.jobs])
    elif which == "extend":
        await intake.extend(
            s,
            [
                ev.Extension(
                    e.job_id,
                    e.lease_token,
                    seconds(e.extend_by) if e.HasField("extend_by") else None,
                )
                for e in req.extend.jobs
            ],
        )
    elif which == "progress":
        p = req.progress
        text, problem = _json("progress", lambda: convert.struct_to_json("progress", p.progress))
        await intake.progress(s, ev.Progress(p.job_id, p.lease_token, text, problem))
    elif which == "heartbeat":
        engine.heartbeat(s)
    elif which == "drain":
        await engine.drain_stream(s)
    else:  # a second `open`, or a case this server does not know
        raise InvalidArgument(
            f"unexpected message {which!r} on an open stream", reason="PROTOCOL_VIOLATION"
        )


def _json(what: str, encode: Callable[[], str]) -> tuple[str | None, str | None]:
    """(JSON text, None), or (None, why it is refused)."""
    try:
        return encode(), None
    except Exception:
        return None, f"{what} is not valid JSON"


def _completion(c: w.CompletedJob) -> ev.Completion:
    if not c.HasField("result"):
        return ev.Completion(c.job_id, c.lease_token, None)
    text, problem = _json("result", lambda: convert.struct_to_json("result", c.result))
    return ev.Completion(c.job_id, c.lease_token, text, problem)


def _failure(f: w.FailedJob) -> ev.WorkerFailure:
    details = None
    if f.error.HasField("details"):
        with contextlib.suppress(Exception):
            details = json.loads(convert.struct_to_json("details", f.error.details))
    return ev.WorkerFailure(
        f.job_id,
        f.lease_token,
        FAILURE_CLASSES.get(f.failure_class, FailureClass.RETRY),
        seconds(f.retry_after) if f.HasField("retry_after") else None,
        f.error.message,
        details,
    )


# -- responses out -------------------------------------------------------------------------------
def response(msg: ev.Outgoing) -> w.LeaseResponse:
    """The engine's value as the message the worker gets."""
    if isinstance(msg, ev.Delivered):
        out = w.LeaseResponse()
        convert.add_leased_jobs(
            out.jobs.jobs, ((le.job, le.id_str, le.token_str, le.expires_at) for le in msg.leases)
        )
        return out
    if isinstance(msg, ev.Rejected):
        code = REJECT_CODES[msg.code]
        return w.LeaseResponse(
            rejected=w.LeaseRejected(job_id=msg.job_id, reason=msg.reason, code=code)
        )
    if isinstance(msg, ev.LeaseExtended):
        ext = w.LeaseExtended(job_id=msg.job_id)
        convert.set_time(ext.lease_expires_at, msg.expires_at)
        return w.LeaseResponse(extended=ext)
    if isinstance(msg, ev.CancelNotice):
        return w.LeaseResponse(cancel=w.CancelNotice(job_id=msg.job_id))
    if isinstance(msg, ev.Draining):
        return w.LeaseResponse(draining=w.Draining(grace_period=duration(msg.grace)))
    return w.LeaseResponse(heartbeat=w.Heartbeat())


async def _write(stream: Stream, context: Ctx) -> None:
    """Sends the stream's outbox; a heartbeat when it has been quiet for a while."""
    while True:
        msg: ev.Outgoing | None
        try:
            msg = stream.outbox.get_nowait()
        except asyncio.QueueEmpty:
            try:
                msg = await within(stream.outbox.get(), HEARTBEAT_EVERY)
            except TimeoutError:
                msg = ev.HEARTBEAT
        if msg is None:
            return
        await context.write(response(msg))
