"""Helpers for the operator tests: seed dead letters and jobs with SQL (test setup), read errors."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from tests import support

# Recent enough that no default retention applies; whole seconds so protobuf round-trips exactly.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


async def seed_job(
    db: asyncpg.Connection,
    *,
    queue: str = "default",
    kind: str = "send_email",
    state: str = "queued",
    finished_at: datetime | None = None,
    attempt: int = 0,
    errors: list[dict[str, Any]] | None = None,
    payload: dict[str, Any] | None = None,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO jobqueue.jobs (id, queue, kind, payload, priority, state, attempt,"
        " max_attempts, lease_seconds, errors, finished_at, idempotency_key)"
        " VALUES ($1, $2, $3, $4::jsonb, 0, $5, $6, $7, 30, $8::jsonb, $9, $10)",
        job_id,
        queue,
        kind,
        json.dumps(payload or {"n": 1}),
        state,
        attempt,
        max_attempts,
        json.dumps(errors or []),
        finished_at,
        idempotency_key,
    )
    return job_id


def attempt_errors(n: int, at: datetime) -> list[dict[str, Any]]:
    return [
        {
            "attempt": i,
            "message": f"boom {i}",
            "details": {"code": i},
            "failed_at": (at - timedelta(seconds=n - i)).isoformat(),
            "source": "worker",
        }
        for i in range(1, n + 1)
    ]


async def seed_dead_letter(
    db: asyncpg.Connection,
    *,
    queue: str = "default",
    kind: str = "send_email",
    failed_at: datetime = T0,
    attempts: int = 3,
    payload: dict[str, Any] | None = None,
    job_row: bool = True,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """What the Lease work writes when a job runs out of attempts: a failed job row and its copy."""
    errors = attempt_errors(attempts, failed_at)
    payload = payload or {"to": "a@example.com", "n": attempts}
    job_id = uuid.uuid4()
    if job_row:
        job_id = await seed_job(
            db,
            queue=queue,
            kind=kind,
            state="failed",
            finished_at=failed_at,
            attempt=attempts,
            errors=errors,
            payload=payload,
            max_attempts=attempts,
            idempotency_key=idempotency_key,
        )
    await db.execute(
        "INSERT INTO jobqueue.dead_letters (job_id, queue, kind, payload, priority, attempts,"
        " max_attempts, errors, idempotency_key, lease_seconds, created_at, failed_at)"
        " VALUES ($1, $2, $3, $4::jsonb, 2, $5, $5, $6::jsonb, $7, 30, $8, $9)",
        job_id,
        queue,
        kind,
        json.dumps(payload),
        attempts,
        json.dumps(errors),
        idempotency_key,
        failed_at - timedelta(minutes=5),
        failed_at,
    )
    return job_id


def error_info(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason of a failed call."""
    return err.code(), support.error_info(err).reason
