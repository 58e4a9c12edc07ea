"""The scheduler: parked jobs (scheduled, or retrying after a backoff) become claimable on time."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from jobqueue_grpc._aio import wait
from jobqueue_grpc.engine.claims import CLAIM_MAX, IDLE_POLL
from jobqueue_grpc.engine.loops import report
from jobqueue_grpc.engine.ports import LeasePort
from jobqueue_grpc.engine.wakeups import WakeBus
from jobqueue_grpc.store.notify import Commits

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, leases: LeasePort, bus: WakeBus, commits: Commits) -> None:
        self.leases = leases
        self.bus = bus
        self.commits = commits
        self.stopped = False

    async def run(self) -> None:
        wake = self.bus.schedule
        while not self.stopped:
            delay = IDLE_POLL
            wake.clear()  # before the pass: a wake-up during it is kept
            try:
                promoted = await self.leases.promote_due(CLAIM_MAX)
                if promoted:  # every engine on this store (they ignore its NOTIFY)
                    self.commits.jobs_ready()
                if promoted >= CLAIM_MAX:
                    delay = 0.0
                else:
                    nxt = await self.leases.next_parked_due()
                    if nxt is not None:
                        delay = min(
                            IDLE_POLL, max(0.005, (nxt - datetime.now(UTC)).total_seconds())
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                report(log, "scheduler pass failed", exc)
            await wait(wake.wait(), delay)
