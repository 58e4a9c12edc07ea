"""Flow control in the claim (issue 14): which queues have limits, and the claim that honours them.

Flow control off costs nothing: a group of streams none of whose queues has limits is claimed by
the plain `claim_jobs`, as before. Which queues have limits is cached per replica for at most
`LIMITS_TTL`, and dropped at once when a NOTIFY on the limits channel says a queue's limits
changed (store/notify.py Listener -> `changed`). A limited queue is claimed by the store's
flow-controlled claim (store/limits.py), one queue at a time, with the slots the plain queues
left. A claim a rate limit cut short asks for a claim round again when the next token is due.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from jobqueue_grpc import metrics
from jobqueue_grpc.domain.records import LeasedJob
from jobqueue_grpc.engine.ports import LeasePort, LimitPort, Slot
from jobqueue_grpc.engine.wakeups import WakeBus

LIMITS_TTL = 1.0  # seconds a replica trusts its list of limited queues without a NOTIFY
MIN_RETRY = 0.005  # seconds: the soonest a rate-limited queue is claimed again
MAX_RETRY = 1.0  # the claim loop's own timer covers anything later


class FlowControl:
    def __init__(self, leases: LeasePort, limits: LimitPort, bus: WakeBus) -> None:
        self.leases = leases
        self.limits = limits
        self.bus = bus
        self._limited: frozenset[str] = frozenset()
        self._read_at = float("-inf")
        self._reading: asyncio.Future[frozenset[str]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._turn = 0  # which limited queue of a group goes first
        self._changes = 0

    def changed(self, _queue: str = "") -> None:
        """A queue's limits changed (on any replica): read them again and claim again."""
        self._read_at = float("-inf")
        self._changes += 1
        self.bus.jobs_ready()

    def is_limited(self, queue: str) -> bool:
        """From the cache, without waiting (the hand-off asks for every new job)."""
        return queue in self._limited

    async def limited(self) -> frozenset[str]:
        if time.monotonic() - self._read_at <= LIMITS_TTL:
            return self._limited
        if self._reading is None:  # one read at a time; concurrent claims share it
            self._reading = asyncio.ensure_future(self._read())
        reading = self._reading
        try:
            return await asyncio.shield(reading)
        finally:
            if self._reading is reading and reading.done():
                self._reading = None

    async def _read(self) -> frozenset[str]:
        started, changes = time.monotonic(), self._changes
        self._limited = await self.limits.limited_queues()
        if changes == self._changes:  # else a change heard while reading may be missing
            self._read_at = started
        return self._limited

    async def claim(
        self, queues: Sequence[str], kinds: Sequence[str] | None, slots: Sequence[Slot]
    ) -> list[LeasedJob]:
        """Job n goes to slot n, as with the plain claim."""
        limited = await self.limited()
        if not limited or limited.isdisjoint(queues):
            return await self.leases.claim(queues, kinds, slots)
        plain = [q for q in queues if q not in limited]
        jobs = await self.leases.claim(plain, kinds, slots) if plain else []
        mine = [q for q in queues if q in limited]
        self._turn += 1
        k = self._turn % len(mine)
        for queue in mine[k:] + mine[:k]:
            rest = slots[len(jobs) :]
            if not rest:
                break
            out = await self.limits.claim(queue, kinds, rest)
            if out is None:  # its limits were cleared since the cache was read
                self._read_at = float("-inf")
                jobs += await self.leases.claim([queue], kinds, rest)
                continue
            jobs += out.jobs
            if out.held:
                metrics.held_back(queue, out.held)
            if out.retry_in is not None:
                self._claim_again_in(out.retry_in)
        return jobs

    def _claim_again_in(self, delay: float) -> None:
        delay = min(MAX_RETRY, max(MIN_RETRY, delay))
        at = time.monotonic() + delay
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self.bus.jobs_ready()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
