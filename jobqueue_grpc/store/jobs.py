"""JobService statements: enqueue (with idempotency), get, list, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from jobqueue_grpc.domain.errors import FailedPrecondition, job_not_found
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.domain.states import CancelOutcome, JobState, cancel_outcome
from jobqueue_grpc.store.queries import q
from jobqueue_grpc.store.types import Conn, Row

# The keyset cursor that sorts after every row: the first page starts here.
FIRST_PAGE = (datetime.max.replace(tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))


class JobStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def insert(self, jobs: Sequence[NewJob]) -> list[tuple[Row, bool]]:
        """Inserts `jobs` atomically; returns (row, created) for each, in order.

        One statement, so no BEGIN/COMMIT round trips: all the jobs commit together or none do.
        A job whose idempotency key already names a job (or an earlier job of the same batch)
        is not inserted: the existing row comes back with created = False.
        """
        async with self.pool.acquire() as conn:
            return await self._insert(conn, jobs)

    async def _insert(self, conn: Conn, jobs: Sequence[NewJob]) -> list[tuple[Row, bool]]:
        rows = await conn.fetch(
            q("insert_jobs"),
            [j.id for j in jobs],
            [j.queue for j in jobs],
            [j.kind for j in jobs],
            [j.payload_json for j in jobs],
            [j.priority for j in jobs],
            [j.max_attempts for j in jobs],
            [j.run_at for j in jobs],
            [j.idempotency_key for j in jobs],
            [j.lease_seconds for j in jobs],
            [j.backoff_base for j in jobs],
            [j.backoff_cap for j in jobs],
        )
        inserted = {r["id"]: r for r in rows}
        existing: dict[str, Row] = {}
        missing = [j.idempotency_key for j in jobs if j.id not in inserted and j.idempotency_key]
        if missing:
            existing = {
                r["idempotency_key"]: r
                for r in await conn.fetch(q("jobs_by_idempotency_keys"), missing)
            }
        out: list[tuple[Row, bool]] = []
        for j in jobs:
            if j.id in inserted:
                out.append((inserted[j.id], True))
            else:
                assert j.idempotency_key is not None
                row = existing.get(j.idempotency_key)
                if row is None:  # the conflicting job vanished (pruned) mid-call: rare
                    raise asyncpg.SerializationError("idempotency key conflict with a deleted job")
                out.append((row, False))
        return out

    async def get(self, job_id: uuid.UUID) -> Row:
        row = await self.pool.fetchrow(q("get_job"), job_id)
        if row is None:
            raise job_not_found(str(job_id))
        return row

    async def list(
        self,
        *,
        queue: str | None,
        kind: str | None,
        state: JobState | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[Row]:
        last_id = after[1] if after else FIRST_PAGE[1]
        state_value = state.value if state else None
        return list(await self.pool.fetch(q("list_jobs"), queue, kind, state_value, last_id, limit))

    async def cancel(self, job_id: uuid.UUID) -> tuple[Row, CancelOutcome]:
        async with self.pool.acquire() as conn, conn.transaction():
            state = await conn.fetchval(q("lock_job_state"), job_id)
            if state is None:
                raise job_not_found(str(job_id))
            outcome = cancel_outcome(JobState(state))
            if outcome is None:
                raise FailedPrecondition(
                    f"job {job_id} is already {state.upper()} and cannot be cancelled",
                    reason="JOB_TERMINAL",
                )
            query = "cancel_waiting_job" if outcome is CancelOutcome.CANCELLED else "request_cancel"
            row = await conn.fetchrow(q(query), job_id)
            assert row is not None
            return row, outcome
