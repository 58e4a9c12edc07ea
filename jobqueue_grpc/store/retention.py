"""Retention: deletes finished jobs and dead letters past their keep period, in small batches."""

from __future__ import annotations

import asyncpg

from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.store.errors import translated
from jobqueue_grpc.store.queries import q


@translated
class RetentionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def prune_jobs(self, state: JobState, older_than: float, batch: int) -> int:
        """Deletes up to `batch` jobs in terminal `state` finished more than `older_than` s ago."""
        if not state.terminal:
            raise ValueError(f"only finished jobs are pruned, not {state}")
        status = await self.pool.execute(q("prune_jobs"), state.value, older_than, batch)
        return int(status.split()[-1])

    async def prune_dead_letters(self, older_than: float, batch: int) -> int:
        """Deletes up to `batch` dead letters (and their failed job rows) older than that."""
        return int(await self.pool.fetchval(q("prune_dead_letters"), older_than, batch))
