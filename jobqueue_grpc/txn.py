"""Enqueue inside your own database transaction: the job exists if and only if it commits.

For a service that shares the queue's PostgreSQL (the outbox problem): instead of calling
Enqueue after its commit (and losing the job if it crashes in between) or before (and running a
job for a change that rolled back), it calls the schema's SQL function `jobqueue.enqueue(...)`
in the same transaction. The function validates and defaults exactly as the Enqueue RPC does,
and wakes the servers when the transaction commits (a NOTIFY, which PostgreSQL sends only then).

    async with conn.transaction():                       # asyncpg
        await conn.execute("UPDATE accounts SET ...")
        job = await txn.enqueue(conn, "send_email", {"to": "ada@example.com"})

    with conn.transaction():                             # psycopg 3 (sync)
        conn.execute("UPDATE accounts SET ...")
        job = txn.enqueue_sync(conn, "send_email", {"to": "ada@example.com"})

`enqueue` takes an asyncpg connection or a psycopg AsyncConnection; `enqueue_sync` a psycopg
Connection. Neither driver is imported here: pass the connection you already have. A bad
argument raises the driver's error for SQLSTATE 22023 (asyncpg InvalidParameterValueError,
psycopg errors.InvalidParameterValue) whose message names the field. With no traceparent given,
the job takes the current OpenTelemetry span's, as the client does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobqueue_grpc._trace import current_traceparent

__all__ = ["Enqueued", "enqueue", "enqueue_sync"]

_ARGS = (
    "kind",
    "payload",
    "queue",
    "priority",
    "max_attempts",
    "run_at",
    "idempotency_key",
    "lease_duration",
    "backoff_base",
    "backoff_cap",
    "metadata",
    "traceparent",
    "tracestate",
    "concurrency_key",
    "unique_key",
    "unique_states",
    "unique_period",
)
_CASTS = {
    "kind": "text",
    "payload": "jsonb",
    "queue": "text",
    "priority": "int",
    "max_attempts": "int",
    "run_at": "timestamptz",
    "idempotency_key": "text",
    "lease_duration": "float8",
    "backoff_base": "float8",
    "backoff_cap": "float8",
    "metadata": "jsonb",
    "traceparent": "text",
    "tracestate": "text",
    "concurrency_key": "text",
    "unique_key": "text",
    "unique_states": "text[]",
    "unique_period": "float8",
}
# seconds in, interval to SQL
_SECONDS = {"lease_duration", "backoff_base", "backoff_cap", "unique_period"}


def _call(placeholder: str) -> str:
    def arg(i: int, name: str) -> str:
        p = placeholder.format(i + 1)
        value = f"{p}::{_CASTS[name]}"
        if name in _SECONDS:
            value = f"{value} * interval '1 second'"
        return f"{name} => {value}"

    args = ", ".join(arg(i, n) for i, n in enumerate(_ARGS))
    return f"SELECT id, state, created FROM jobqueue.enqueue({args})"


ASYNCPG_SQL = _call("${}")
PSYCOPG_SQL = _call("%s")


@dataclass(frozen=True, slots=True)
class Enqueued:
    id: uuid.UUID
    state: str  # 'queued' or 'scheduled'; an existing job's, when not created
    created: bool  # False: the idempotency key or the unique key already named this job


def _values(
    kind: str,
    payload: Mapping[str, Any] | None,
    queue: str,
    priority: int,
    max_attempts: int,
    run_at: datetime | None,
    idempotency_key: str | None,
    lease_duration: float | None,
    backoff_base: float | None,
    backoff_cap: float | None,
    metadata: Mapping[str, str] | None,
    traceparent: str | None,
    tracestate: str | None,
    concurrency_key: str | None,
    unique_key: str | None,
    unique_states: Sequence[str] | None,
    unique_period: float | None,
) -> list[Any]:
    if traceparent is None:
        current, state = current_traceparent()
        traceparent, tracestate = (current or None), (state or None)
    return [
        kind,
        json.dumps(dict(payload or {}), allow_nan=False),
        queue,
        priority,
        max_attempts,
        run_at,
        idempotency_key,
        lease_duration,
        backoff_base,
        backoff_cap,
        json.dumps(dict(metadata)) if metadata else None,
        traceparent,
        tracestate,
        concurrency_key,
        unique_key,
        list(unique_states) if unique_states is not None else None,
        unique_period,
    ]


def _enqueued(row: Any) -> Enqueued:
    job_id, state, created = row[0], row[1], row[2]
    return Enqueued(
        job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id)), state, created
    )


async def enqueue(
    conn: Any,
    kind: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    priority: int = 0,
    max_attempts: int = 0,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    lease_duration: float | None = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
    metadata: Mapping[str, str] | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    concurrency_key: str | None = None,
    unique_key: str | None = None,
    unique_states: Sequence[str] | None = None,
    unique_period: float | None = None,
) -> Enqueued:
    """jobqueue.enqueue() on `conn` (asyncpg Connection or psycopg AsyncConnection), in whatever
    transaction it is in. Durations are seconds; `run_at` timezone-aware; `concurrency_key` is
    the key the queue's flow control limits per key (as EnqueueRequest.concurrency_key).
    `unique_key` (with `unique_states`, state names, and `unique_period`) makes the job unique as
    EnqueueRequest.unique does; a duplicate returns the existing job with created False."""
    values = _values(
        kind, payload, queue, priority, max_attempts, run_at, idempotency_key,
        lease_duration, backoff_base, backoff_cap, metadata, traceparent, tracestate,
        concurrency_key, unique_key, unique_states, unique_period,
    )  # fmt: skip
    if hasattr(conn, "fetchrow"):  # asyncpg
        return _enqueued(await conn.fetchrow(ASYNCPG_SQL, *values))
    cursor = await conn.execute(PSYCOPG_SQL, values)  # psycopg AsyncConnection
    return _enqueued(await cursor.fetchone())


def enqueue_sync(
    conn: Any,
    kind: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    priority: int = 0,
    max_attempts: int = 0,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    lease_duration: float | None = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
    metadata: Mapping[str, str] | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    concurrency_key: str | None = None,
    unique_key: str | None = None,
    unique_states: Sequence[str] | None = None,
    unique_period: float | None = None,
) -> Enqueued:
    """enqueue() for a psycopg (3) Connection."""
    values = _values(
        kind, payload, queue, priority, max_attempts, run_at, idempotency_key,
        lease_duration, backoff_base, backoff_cap, metadata, traceparent, tracestate,
        concurrency_key, unique_key, unique_states, unique_period,
    )  # fmt: skip
    return _enqueued(conn.execute(PSYCOPG_SQL, values).fetchone())
