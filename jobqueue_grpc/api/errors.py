"""The one table from errors to gRPC status codes, and `abort`, which applies it (the call
wrapper in `interceptors.py` calls it for every exception escaping a jobqueue handler).

Every error a client sees carries `google.rpc.ErrorInfo` with a stable reason; INVALID_ARGUMENT
adds `google.rpc.BadRequest` field violations. Anything unexpected becomes INTERNAL with no SQL
and no traceback in it (those go to the server log).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from jobqueue_grpc.domain import errors as e

log = logging.getLogger(__name__)

DOMAIN = "jobqueue-grpc"

CODES: dict[type[e.JobQueueError], grpc.StatusCode] = {
    e.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    e.NotFound: grpc.StatusCode.NOT_FOUND,
    e.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    e.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    e.Unavailable: grpc.StatusCode.UNAVAILABLE,
    e.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    e.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def classify(exc: BaseException) -> e.JobQueueError:
    """Turns any exception into the domain error a client should see (the store has turned the
    driver's errors into domain errors already: store/errors.py)."""
    if isinstance(exc, e.JobQueueError):
        return exc
    return e.JobQueueError("internal error", reason="INTERNAL")


def code_of(err: e.JobQueueError) -> grpc.StatusCode:
    for cls in type(err).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


# Most field violations one status lists: the status travels in a trailer, and a client drops
# trailers past 8-16 KiB (grpc's default metadata limits) and sees RESOURCE_EXHAUSTED instead.
# A batch of a thousand bad jobs would otherwise send a thousand violations.
MAX_VIOLATIONS = 10


def to_status(err: e.JobQueueError, metadata: dict[str, str] | None = None) -> grpc.Status:
    code = code_of(err)
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=metadata or {})
    details: list[Any] = [info]
    message = err.message
    if isinstance(err, e.InvalidArgument) and err.violations:
        shown = err.violations[:MAX_VIOLATIONS]
        if len(err.violations) > len(shown):
            message += f" ({len(err.violations)} violations; the first {len(shown)} are listed)"
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in shown
            ]
        )
        details.append(bad)
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    result: grpc.Status = rpc_status.to_status(status)
    return result


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> None:
    """Ends the call of `method` with the status `exc` maps to. Always raises."""
    err = classify(exc)
    if err.reason == "INTERNAL":
        log.error("internal error in %s", method, exc_info=exc)
    status = to_status(err)
    await context.abort(status.code, status.details, status.trailing_metadata)


# Exceptions that already are the call's outcome: never mapped, passed on as they are.
PASSTHROUGH = (asyncio.CancelledError, grpc.aio.AbortError)
