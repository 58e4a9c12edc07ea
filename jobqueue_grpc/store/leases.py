"""WorkerService statements: claim, settle outcomes, extend, progress, expire, release."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from jobqueue_grpc.store.queries import q
from jobqueue_grpc.store.types import Row


@dataclass(frozen=True)
class Failure:
    """One attempt to end: the domain's decision plus the error to record."""

    job_id: uuid.UUID
    token: uuid.UUID
    next_state: str  # 'retrying' or 'failed'
    delay: float
    error_json: str  # {"message", "details", "source"}


@dataclass
class Settled:
    """Which outcomes took effect; the rest were stale and changed nothing."""

    completed: set[uuid.UUID]
    cancelled: set[uuid.UUID]
    failed: list[Row]  # (id, state, queue, kind) with the state each ended in


# Decides the next state of a lease that ended without an outcome (expiry, stream closed).
Decide = Callable[[Row], Failure]


class LeaseStore:
    def __init__(self, pool: asyncpg.Pool, claim_pool: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        self.claim_pool = claim_pool or pool  # see store.CLAIM_SETTINGS

    async def claim(
        self,
        queues: Sequence[str],
        kinds: Sequence[str] | None,
        slots: Sequence[tuple[uuid.UUID, str]],
    ) -> list[Row]:
        """Leases up to len(slots) jobs in one statement; job n goes to slot n."""
        return list(
            await self.claim_pool.fetch(
                q("claim_jobs"),
                list(queues),
                list(kinds) if kinds else None,
                [s for s, _ in slots],
                [w for _, w in slots],
            )
        )

    async def unlease_handed_off(self, jobs: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> int:
        """Puts back in the queue these (job id, stream id) hand-offs that were never pushed."""
        rows = await self.pool.fetch(
            q("unlease_handed_off_jobs"), [j for j, _ in jobs], [s for _, s in jobs]
        )
        return len(rows)

    async def promote_due(self, limit: int) -> tuple[int, list[str]]:
        """Makes due scheduled/retrying jobs claimable; returns how many, and their queues."""
        rows = await self.pool.fetch(q("promote_due_jobs"), limit)
        return sum(r["n"] for r in rows), [r["queue"] for r in rows]

    async def next_parked_due(self) -> datetime | None:
        at: datetime | None = await self.pool.fetchval(q("next_parked_due"))
        return at

    async def settle(
        self,
        completes: Sequence[tuple[uuid.UUID, uuid.UUID, str | None]],
        cancels: Sequence[tuple[uuid.UUID, uuid.UUID]],
        failures: Sequence[Failure],
    ) -> Settled:
        """Applies many outcomes: one statement per kind, each atomic and fenced on its own (an
        outcome needs no other to land with it), so no BEGIN/COMMIT round trips."""
        out = Settled(set(), set(), [])
        async with self.pool.acquire() as conn:
            if completes:
                rows = await conn.fetch(
                    q("complete_jobs"),
                    [c[0] for c in completes],
                    [c[1] for c in completes],
                    [c[2] for c in completes],
                )
                out.completed = {r["id"] for r in rows}
            if cancels:
                rows = await conn.fetch(
                    q("cancel_running_jobs"), [c[0] for c in cancels], [c[1] for c in cancels]
                )
                out.cancelled = {r["id"] for r in rows}
            if failures:
                out.failed = list(await conn.fetch(q("fail_jobs"), *_failure_arrays(failures)))
        return out

    async def extend(self, items: Sequence[tuple[uuid.UUID, uuid.UUID, float | None]]) -> list[Row]:
        """Rows (id, lease_expires_at, cancel_requested) for the leases extended."""
        return list(
            await self.pool.fetch(
                q("extend_leases"),
                [i[0] for i in items],
                [i[1] for i in items],
                [i[2] for i in items],
            )
        )

    async def set_progress(self, job_id: uuid.UUID, token: uuid.UUID, progress_json: str) -> bool:
        return await self.pool.fetchval(q("set_progress"), job_id, token, progress_json) is not None

    async def expire(self, limit: int, decide: Decide) -> list[Row]:
        """Ends up to `limit` expired leases (any replica's) as failed attempts."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("lock_expired_leases"), limit)
            if not rows:
                return []
            return list(
                await conn.fetch(q("fail_jobs"), *_failure_arrays([decide(r) for r in rows]))
            )

    async def release(
        self, leases: Sequence[tuple[uuid.UUID, uuid.UUID]], decide: Decide
    ) -> list[Row]:
        """Ends these (job id, lease token) leases as failed attempts, where still current."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                q("lock_leases"), [job for job, _ in leases], [token for _, token in leases]
            )
            if not rows:
                return []
            failures = _failure_arrays([decide(r) for r in rows])
            return list(await conn.fetch(q("fail_jobs"), *failures))


def _failure_arrays(failures: Sequence[Failure]) -> list[list[object]]:
    return [
        [f.job_id for f in failures],
        [f.token for f in failures],
        [f.next_state for f in failures],
        [f.delay for f in failures],
        [f.error_json for f in failures],
    ]
