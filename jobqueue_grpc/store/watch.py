"""WatchJobs' reads: the jobs a change notice names (the notices: store/notify.py)."""

from __future__ import annotations

import uuid
from collections.abc import Collection

import asyncpg

from jobqueue_grpc.domain.records import JobRecord
from jobqueue_grpc.store.errors import translated
from jobqueue_grpc.store.queries import q

_JOB = JobRecord._make


@translated
class WatchStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def jobs(self, ids: Collection[uuid.UUID]) -> list[JobRecord]:
        """The jobs of `ids` that exist, in no particular order."""
        return [_JOB(r) for r in await self.pool.fetch(q("jobs_by_ids"), list(ids))]
