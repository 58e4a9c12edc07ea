"""A new job as the store receives it: validated, defaults applied."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from jobqueue_grpc.domain.errors import FieldViolation
from jobqueue_grpc.domain.limits import concurrency_key_violation
from jobqueue_grpc.domain.outcomes import MAX_DELAY_SECONDS, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS
from jobqueue_grpc.domain.unique import Unique
from jobqueue_grpc.domain.validation import (
    IDEMPOTENCY_KEY_MAX,
    kind_violation,
    queue_violation,
)

MAX_PRIORITY = 1_000_000
MAX_ATTEMPTS_LIMIT = 1_000


@dataclass(frozen=True)
class Limits:
    """The parts of server config that validation needs."""

    payload_max_bytes: int
    default_max_attempts: int
    default_lease_seconds: float


_last_uuid7 = 0
_RAND_B_HEADROOM = (1 << 61) - 1  # a fresh draw leaves 2^61 increments before the variant bits


def _reserve_uuid7(n: int) -> int:
    """The first of `n` consecutive UUIDv7 values, all above every value handed out before.

    RFC 9562 section 6.2, method 2 (monotonic random): a fresh random draw each millisecond, then
    +1 per id; the draw's top bit is clear so counting on never carries into the variant bits.
    """
    global _last_uuid7
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & _RAND_B_HEADROOM)
    )
    if value <= _last_uuid7:  # same millisecond (or the clock stepped back): count on
        value = _last_uuid7 + 1
    _last_uuid7 = value + n - 1
    return value


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7), strictly increasing within this process.

    New jobs land at the right edge of the primary-key index instead of random pages, and the
    primary key doubles as ListJobs' "newest first" order.
    """
    return uuid.UUID(int=_reserve_uuid7(1))


def uuid7_strings(n: int) -> list[str]:
    """`n` strictly increasing uuid7s in canonical text form: one clock read and one random draw
    for the lot, and only the low 48 bits formatted per id (the rest is shared)."""
    out: list[str] = []
    value = _reserve_uuid7(n)
    end = value + n
    while value < end:
        high, low = divmod(value, 1 << 48)
        stop = min(end, (high + 1) << 48)  # where the shared high part would change
        h = f"{high:020x}"
        prefix = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:]}-"
        out += [f"{prefix}{x:012x}" for x in range(low, low + stop - value)]
        value = stop
    return out


@dataclass(slots=True)
class NewJob:
    queue: str
    kind: str
    payload_json: str  # a JSON object, already encoded
    priority: int
    max_attempts: int
    run_at: datetime | None
    idempotency_key: str | None
    lease_seconds: float
    backoff_base: float | None
    backoff_cap: float | None
    id: uuid.UUID = field(default_factory=uuid7)
    unique: Unique | None = None  # EnqueueRequest.unique, validated (domain/unique.py)
    concurrency_key: str | None = None  # flow control (domain/limits.py)
    # issue 16: labels (a JSON object of strings; None when none) and the producer's trace context
    metadata_json: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(slots=True)
class NewJobs:
    """A validated batch of new jobs, column by column, as the batch insert takes them.

    Row i of every list is job i. `ids` are uuid7s in text form (the wire form of Job.id).
    """

    ids: list[str] = field(default_factory=list)
    queue: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    payload_json: list[str] = field(default_factory=list)
    priority: list[int] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    run_at: list[datetime | None] = field(default_factory=list)
    idempotency_key: list[str | None] = field(default_factory=list)
    lease_seconds: list[float] = field(default_factory=list)
    backoff_base: list[float | None] = field(default_factory=list)
    backoff_cap: list[float | None] = field(default_factory=list)
    concurrency_key: list[str | None] = field(default_factory=list)
    # issue 16 (see NewJob)
    metadata_json: list[str | None] = field(default_factory=list)
    traceparent: list[str | None] = field(default_factory=list)
    tracestate: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queue)

    def append(self, job: NewJob) -> None:
        """Adds one job's values (its id is not taken: `ids` is filled for the whole batch)."""
        self.queue.append(job.queue)
        self.kind.append(job.kind)
        self.payload_json.append(job.payload_json)
        self.priority.append(job.priority)
        self.max_attempts.append(job.max_attempts)
        self.run_at.append(job.run_at)
        self.idempotency_key.append(job.idempotency_key)
        self.lease_seconds.append(job.lease_seconds)
        self.backoff_base.append(job.backoff_base)
        self.backoff_cap.append(job.backoff_cap)
        self.concurrency_key.append(job.concurrency_key)
        self.metadata_json.append(job.metadata_json)
        self.traceparent.append(job.traceparent)
        self.tracestate.append(job.tracestate)


def check_new_job(
    prefix: str,
    *,
    queue: str,
    kind: str,
    payload_bytes: int,
    priority: int,
    max_attempts: int,
    idempotency_key: str,
    lease_seconds: float | None,
    backoff_base: float | None,
    backoff_cap: float | None,
    limits: Limits,
    concurrency_key: str = "",
) -> list[FieldViolation]:
    """Every problem with one enqueue request; `prefix` names it inside a batch ("jobs[3].")."""
    out: list[FieldViolation] = []

    def add(v: FieldViolation | None) -> None:
        if v is not None:
            out.append(v)

    add(queue_violation(prefix + "queue", queue))
    add(kind_violation(prefix + "kind", kind))
    add(concurrency_key_violation(prefix + "concurrency_key", concurrency_key))
    if payload_bytes > limits.payload_max_bytes:
        out.append(
            FieldViolation(
                prefix + "payload",
                f"payload is {payload_bytes} bytes; the limit is {limits.payload_max_bytes}",
                reason="PAYLOAD_TOO_LARGE",
            )
        )
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        out.append(FieldViolation(prefix + "priority", f"priority must be within ±{MAX_PRIORITY}"))
    if not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        out.append(
            FieldViolation(
                prefix + "max_attempts",
                f"max_attempts must be 1..{MAX_ATTEMPTS_LIMIT} (0 means the default)",
            )
        )
    if len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        out.append(
            FieldViolation(
                prefix + "idempotency_key",
                f"idempotency_key is longer than {IDEMPOTENCY_KEY_MAX} characters",
            )
        )
    if "\x00" in idempotency_key:
        out.append(FieldViolation(prefix + "idempotency_key", "idempotency_key contains NUL"))
    if lease_seconds is not None and not MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS:
        out.append(
            FieldViolation(prefix + "lease_duration", "lease_duration must be between 1 s and 24 h")
        )
    for name, value in (("backoff_base", backoff_base), ("backoff_cap", backoff_cap)):
        if value is not None and not 0 <= value <= MAX_DELAY_SECONDS:
            out.append(
                FieldViolation(
                    prefix + "retry_policy." + name, f"{name} must be between 0 and 30 days"
                )
            )
    if backoff_base is not None and backoff_cap is not None and backoff_cap < backoff_base:
        out.append(
            FieldViolation(prefix + "retry_policy.backoff_cap", "backoff_cap is below backoff_base")
        )
    return out
