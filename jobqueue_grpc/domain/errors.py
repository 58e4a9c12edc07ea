"""Domain errors. `api/errors.py` is the one table mapping each to a gRPC code and reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    # The ErrorInfo reason this violation gives the whole error when it is the first.
    reason: str = "INVALID_ARGUMENT"


class JobQueueError(Exception):
    """Base of every error a client may see; `reason` is the stable ErrorInfo reason."""

    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(JobQueueError):
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = violations or []


class MalformedRequest(InvalidArgument):
    """A request message that does not parse as its type (bad wire bytes, invalid UTF-8 in a
    string, a truncated field, nesting deeper than protobuf allows)."""

    reason = "MALFORMED_REQUEST"

    def __init__(self, message_type: str) -> None:
        super().__init__(
            f"the request is not a valid {message_type} message",
            [FieldViolation("", f"the request body does not parse as {message_type}")],
        )


class NotFound(JobQueueError):
    reason = "NOT_FOUND"


class AlreadyExists(JobQueueError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(JobQueueError):
    reason = "FAILED_PRECONDITION"


class Unavailable(JobQueueError):
    reason = "UNAVAILABLE"


class Unauthenticated(JobQueueError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(JobQueueError):
    reason = "PERMISSION_DENIED"


class DeadlineExceeded(JobQueueError):
    reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(JobQueueError):
    reason = "RESOURCE_EXHAUSTED"


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")


def schedule_not_found(schedule_id: str) -> NotFound:
    return NotFound(f"schedule {schedule_id} not found", reason="SCHEDULE_NOT_FOUND")
