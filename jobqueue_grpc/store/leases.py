"""WorkerService statements: claim, settle outcomes, extend, progress, expire, release."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg

from jobqueue_grpc.domain.outcomes import Attempt, Failure
from jobqueue_grpc.domain.records import Ended, Extended, LeasedJob, Settled
from jobqueue_grpc.store.errors import translated
from jobqueue_grpc.store.queries import q

# Decides how an attempt that ended without an outcome (expiry, stream closed) ends.
Decide = Callable[[Attempt], Failure]

_LEASED = LeasedJob._make
_ENDED = Ended._make
_EXTENDED = Extended._make


def _attempt(r: asyncpg.Record) -> Attempt:
    """A row of lock_expired_leases / lock_leases."""
    return Attempt(*r)


@translated
class LeaseStore:
    def __init__(self, pool: asyncpg.Pool, claim_pool: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        self.claim_pool = claim_pool or pool  # see pool.CLAIM_SETTINGS

    async def claim(
        self,
        queues: Sequence[str],
        kinds: Sequence[str] | None,
        slots: Sequence[tuple[uuid.UUID, str]],
    ) -> list[LeasedJob]:
        """Leases up to len(slots) jobs in one statement; job n goes to slot n."""
        rows = await self.claim_pool.fetch(
            q("claim_jobs"),
            list(queues),
            list(kinds) if kinds else None,
            [s for s, _ in slots],
            [w for _, w in slots],
        )
        return list(map(_LEASED, rows))

    async def unlease_handed_off(self, jobs: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> int:
        """Puts back in the queue these (job id, stream id) hand-offs that were never pushed."""
        rows = await self.pool.fetch(
            q("unlease_handed_off_jobs"), [j for j, _ in jobs], [s for _, s in jobs]
        )
        return len(rows)

    async def promote_due(self, limit: int) -> int:
        """Makes due scheduled/retrying jobs claimable (and NOTIFYs); returns how many."""
        rows = await self.pool.fetch(q("promote_due_jobs"), limit)
        return sum(r["n"] for r in rows)

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
        out = Settled()
        async with self.pool.acquire() as conn:
            if completes:
                rows = await conn.fetch(
                    q("complete_jobs"),
                    [c[0] for c in completes],
                    [c[1] for c in completes],
                    [c[2] for c in completes],
                )
                out.completed = {r[0] for r in rows}
            if cancels:
                rows = await conn.fetch(
                    q("cancel_running_jobs"), [c[0] for c in cancels], [c[1] for c in cancels]
                )
                out.cancelled = {r[0] for r in rows}
            if failures:
                rows = await conn.fetch(q("fail_jobs"), *_failure_arrays(failures))
                out.failed = list(map(_ENDED, rows))
        return out

    async def extend(
        self, items: Sequence[tuple[uuid.UUID, uuid.UUID, float | None]]
    ) -> list[Extended]:
        """The leases extended (by their job's lease duration where no time is given)."""
        rows = await self.pool.fetch(
            q("extend_leases"),
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
        )
        return list(map(_EXTENDED, rows))

    async def set_progress(self, job_id: uuid.UUID, token: uuid.UUID, progress_json: str) -> bool:
        return await self.pool.fetchval(q("set_progress"), job_id, token, progress_json) is not None

    async def expire(self, limit: int, decide: Decide) -> list[Ended]:
        """Ends up to `limit` expired leases (any replica's) as failed attempts."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("lock_expired_leases"), limit)
            if not rows:
                return []
            failures = [decide(_attempt(r)) for r in rows]
            return list(map(_ENDED, await conn.fetch(q("fail_jobs"), *_failure_arrays(failures))))

    async def release(
        self, leases: Sequence[tuple[uuid.UUID, uuid.UUID]], decide: Decide
    ) -> list[Ended]:
        """Ends these (job id, lease token) leases as failed attempts, where still current."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                q("lock_leases"), [job for job, _ in leases], [token for _, token in leases]
            )
            if not rows:
                return []
            failures = [decide(_attempt(r)) for r in rows]
            return list(map(_ENDED, await conn.fetch(q("fail_jobs"), *_failure_arrays(failures))))


def _failure_arrays(failures: Sequence[Failure]) -> list[list[object]]:
    return [
        [f.job_id for f in failures],
        [f.token for f in failures],
        [f.next_state.value for f in failures],
        [f.delay for f in failures],
        [f.error_json for f in failures],
    ]
