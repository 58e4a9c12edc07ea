"""What an attempt's end does to a job: the outcome rules and every cap and clamp on them.

The engine decides here and hands the store a `Failure` (the decision and the error to record);
the state it leads to is `states.next_state` (a requested cancel wins). Nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from typing import Any

from jobqueue_grpc.domain.retry import FailureClass, decide_failure
from jobqueue_grpc.domain.states import JobState

MIN_LEASE_SECONDS = 1.0
MAX_LEASE_SECONDS = 24 * 3600.0  # a lease (and each extension) lasts at most a day
MAX_DELAY_SECONDS = 30 * 86400.0  # retry-after hints and backoff settings: at most 30 days
ERROR_MESSAGE_MAX = 8192  # characters of a worker's error message kept per attempt


def clamp_lease(seconds: float) -> float:
    """An extension the worker asked for, within the lease bounds."""
    return min(max(seconds, MIN_LEASE_SECONDS), MAX_LEASE_SECONDS)


def clamp_delay(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_DELAY_SECONDS)


class LostBecause(enum.StrEnum):
    """Why a lease ended without the worker's outcome; the `source` of the recorded error."""

    EXPIRED = "lease_expired"
    STREAM_CLOSED = "stream_closed"
    SERVER_SHUTDOWN = "server_shutdown"


LOST_MESSAGES = {
    LostBecause.EXPIRED: "the lease expired without an outcome",
    LostBecause.STREAM_CLOSED: "the worker's stream ended before the job finished",
    LostBecause.SERVER_SHUTDOWN: "the server shut down before the job finished",
}


@dataclass(frozen=True, slots=True)
class RetryDefaults:
    """The server's backoff, for jobs that set none of their own."""

    base: float
    cap: float


@dataclass(frozen=True, slots=True)
class Attempt:
    """What deciding an attempt's end needs to know of the job."""

    job_id: uuid.UUID
    token: uuid.UUID
    attempt: int
    max_attempts: int
    backoff_base: float | None
    backoff_cap: float | None
    last_sleep: float | None


@dataclass(frozen=True, slots=True)
class Failure:
    """One attempt to end: the decision plus the error to record (store: fail_jobs)."""

    job_id: uuid.UUID
    token: uuid.UUID
    next_state: JobState  # RETRYING or FAILED; the store ends it CANCELLED if one was requested
    delay: float  # seconds until the retry
    error_json: str  # {"message", "details", "source"}


def error_json(message: str, source: str, details: dict[str, Any] | None = None) -> str:
    # jsonb cannot hold NUL; one worker's odd message must not sink the batch it is settled in
    text = message[:ERROR_MESSAGE_MAX].replace("\x00", "")
    return json.dumps({"message": text, "details": details, "source": source})


def failed(
    a: Attempt,
    defaults: RetryDefaults,
    *,
    failure_class: FailureClass,
    message: str,
    source: str,
    details: dict[str, Any] | None = None,
    retry_after: float | None = None,
) -> Failure:
    """The end of attempt `a` in failure: retried after a backoff, or dead-lettered."""
    d = decide_failure(
        attempt=a.attempt,
        max_attempts=a.max_attempts,
        failure_class=failure_class,
        base=defaults.base if a.backoff_base is None else a.backoff_base,
        cap=defaults.cap if a.backoff_cap is None else a.backoff_cap,
        prev_sleep=a.last_sleep,
        retry_after=clamp_delay(retry_after) if retry_after is not None else None,
    )
    return Failure(a.job_id, a.token, d.state, d.delay, error_json(message, source, details))


def lost(a: Attempt, defaults: RetryDefaults, because: LostBecause) -> Failure:
    """A lease that ended without an outcome is a failed attempt (the retry path)."""
    return failed(
        a,
        defaults,
        failure_class=FailureClass.RETRY,
        message=LOST_MESSAGES[because],
        source=because,
    )
