"""Checks on client input, made before anything touches the database."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from jobqueue_grpc.domain.errors import FieldViolation, InvalidArgument

QUEUE_RE = re.compile(r"[a-z0-9_.-]{1,64}")
KIND_RE = re.compile(r"[a-z0-9_.-]{1,128}")
IDEMPOTENCY_KEY_MAX = 255
DEFAULT_QUEUE = "default"
QUOTE_MAX = 64  # characters of a client's value an error message repeats


def quote(value: str, limit: int = QUOTE_MAX) -> str:
    """`value` as an error message quotes it: repr of at most `limit` characters, and past that
    the length. An invalid value is never echoed whole: a 1 MiB name would make an error trailer
    no client accepts (and hand an attacker an amplifier)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} chars)"


# The times a request may carry (run_at, dead-letter filters). PostgreSQL and asyncpg hold far
# more, but asyncpg writes datetime.min and datetime.max (0001-01-01, 9999-12-31T23:59:59.999999,
# both valid Timestamps) as -infinity and infinity, which no Timestamp can carry back: such a
# job broke every read of it and every claim that picked it. Nothing sane lies outside this.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 12, 31, tzinfo=UTC)
_TIME_RANGE = "between 1970-01-01T00:00:00Z and 9999-12-31T00:00:00Z"


def time_violation(field: str, at: datetime | None) -> FieldViolation | None:
    """A violation when `at` (None: not a valid time at all) is outside the accepted range."""
    if at is not None and EARLIEST_TIME <= at <= LATEST_TIME:
        return None
    return FieldViolation(field, f"{field} must be {_TIME_RANGE}")


def queue_violation(field: str, queue: str) -> FieldViolation | None:
    if QUEUE_RE.fullmatch(queue):
        return None
    return FieldViolation(field, f"queue {quote(queue)} must match [a-z0-9_.-]{{1,64}}")


def kind_violation(field: str, kind: str) -> FieldViolation | None:
    if not kind:
        return FieldViolation(field, "kind is required")
    if KIND_RE.fullmatch(kind):
        return None
    return FieldViolation(field, f"kind {quote(kind)} must match [a-z0-9_.-]{{1,128}}")


def parse_uuid(field: str, value: str, *, what: str = "job id") -> uuid.UUID:
    """Parses a canonical UUID string or raises INVALID_ARGUMENT naming `field`."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        parsed = None
    if parsed is None or str(parsed) != value.lower() or len(value) != 36:
        raise InvalidArgument(
            f"{what} {quote(value)} is not a UUID",
            [FieldViolation(field, f"{what} must be a UUID like 0b9e0b1c-...")],
            reason="MALFORMED_ID",
        )
    return parsed


def raise_if(violations: list[FieldViolation], message: str = "invalid request") -> None:
    """Raises INVALID_ARGUMENT carrying every violation; the first one names the reason."""
    if violations:
        first = violations[0]
        raise InvalidArgument(f"{message}: {first.description}", violations, reason=first.reason)
