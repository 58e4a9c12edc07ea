"""The reaper: expired leases (on any replica) become failed attempts, into the retry path."""

from __future__ import annotations

import asyncio
import logging

from jobqueue_grpc.engine.loops import report
from jobqueue_grpc.engine.settle import Releaser
from jobqueue_grpc.engine.streams import Registry
from jobqueue_grpc.engine.wakeups import WakeBus

log = logging.getLogger(__name__)

BATCH = 500


class Reaper:
    def __init__(
        self, releaser: Releaser, registry: Registry, bus: WakeBus, interval: float
    ) -> None:
        self.releaser = releaser
        self.registry = registry
        self.bus = bus
        self.interval = interval
        self.stopped = False

    async def run(self) -> None:
        while not self.stopped:
            await asyncio.sleep(self.interval)
            try:
                await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                report(log, "reaper pass failed", exc)

    async def reap(self) -> None:
        while True:
            rows = await self.releaser.expire(BATCH)
            if not rows:
                break
            # a stream here that held one went silent: it gets nothing until it speaks
            self.registry.expired([str(r.id) for r in rows])
            self.bus.jobs_ready()
        self.registry.forget_overdue()
