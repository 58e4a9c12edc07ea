"""A new job as the store receives it: validated, defaults applied."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from jobqueue_grpc.domain.errors import FieldViolation
from jobqueue_grpc.domain.validation import (
    IDEMPOTENCY_KEY_MAX,
    kind_violation,
    queue_violation,
)

MAX_PRIORITY = 1_000_000
MAX_ATTEMPTS_LIMIT = 1_000
MAX_LEASE_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class Limits:
    """The parts of server config that validation needs."""

    payload_max_bytes: int
    default_max_attempts: int
    default_lease_seconds: float


_last_uuid7 = 0


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7), strictly increasing within this process.

    New jobs land at the right edge of the primary-key index instead of random pages, and the
    primary key doubles as ListJobs' "newest first" order.
    """
    global _last_uuid7
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    )
    if value <= _last_uuid7:  # same millisecond (or the clock stepped back): count on
        value = _last_uuid7 + 1
    _last_uuid7 = value
    return uuid.UUID(int=value)


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
) -> list[FieldViolation]:
    """Every problem with one enqueue request; `prefix` names it inside a batch ("jobs[3].")."""
    out: list[FieldViolation] = []

    def add(v: FieldViolation | None) -> None:
        if v is not None:
            out.append(v)

    add(queue_violation(prefix + "queue", queue))
    add(kind_violation(prefix + "kind", kind))
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
    if lease_seconds is not None and not 1.0 <= lease_seconds <= MAX_LEASE_SECONDS:
        out.append(
            FieldViolation(prefix + "lease_duration", "lease_duration must be between 1 s and 24 h")
        )
    for name, value in (("backoff_base", backoff_base), ("backoff_cap", backoff_cap)):
        if value is not None and not 0 <= value <= 30 * 86400:
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
