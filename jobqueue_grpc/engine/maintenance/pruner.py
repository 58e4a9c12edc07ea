"""The pruner: keeps the jobs table from growing without end.

Every `prune_interval` it deletes finished jobs past their state's retention and dead letters past
theirs, `prune_batch_size` rows per statement, until a batch comes back short. Small batches with
SKIP LOCKED hold few locks for little time, so dispatch never waits; every replica may run one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain.states import JobState
from jobqueue_grpc.engine.loops import report
from jobqueue_grpc.engine.ports import RetentionPort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneCounts:
    jobs: dict[JobState, int]
    dead_letters: int

    @property
    def total(self) -> int:
        return sum(self.jobs.values()) + self.dead_letters


class Pruner:
    def __init__(self, store: RetentionPort, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        # State -> seconds to keep; 0 keeps for ever.
        self.retention = {
            JobState.SUCCEEDED: settings.retention_succeeded,
            JobState.CANCELLED: settings.retention_cancelled,
            JobState.FAILED: settings.retention_failed,
        }

    async def prune_once(self) -> PruneCounts:
        """One full round: every batch until nothing past retention is left (or it is locked)."""
        batch = self.settings.prune_batch_size
        jobs: dict[JobState, int] = {}
        for state, keep in self.retention.items():
            if keep > 0:
                jobs[state] = await self._drain(partial(self.store.prune_jobs, state, keep), batch)
        dead = 0
        if self.settings.dead_letter_retention > 0:
            keep = self.settings.dead_letter_retention
            dead = await self._drain(partial(self.store.prune_dead_letters, keep), batch)
        counts = PruneCounts(jobs, dead)
        if counts.total:
            log.info(
                "pruned %d job(s) %s and %d dead letter(s)",
                sum(jobs.values()),
                {s.value: n for s, n in jobs.items() if n},
                dead,
            )
        return counts

    async def _drain(self, run: Callable[[int], Awaitable[int]], batch: int) -> int:
        total = 0
        while True:
            n = await run(batch)
            total += n
            if n < batch:
                return total
            await asyncio.sleep(0)  # let dispatch in between batches

    async def run(self) -> None:
        """Prunes every `prune_interval` until cancelled; a failed round is logged and retried.

        The first round waits one interval too, so a starting replica adds no load at once.
        """
        while True:
            await asyncio.sleep(self.settings.prune_interval)
            try:
                await self.prune_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                interval = self.settings.prune_interval
                report(log, f"prune round failed; retrying in {interval:.0f}s", exc)
