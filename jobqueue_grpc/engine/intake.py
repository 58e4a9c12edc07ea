"""What workers send on their streams, taken in: outcomes to the Settler, extensions and progress
to the store, each checked against the stream's own leases first."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from jobqueue_grpc.domain.outcomes import RetryDefaults, clamp_lease, failed
from jobqueue_grpc.engine import events as ev
from jobqueue_grpc.engine.events import RejectCode
from jobqueue_grpc.engine.ports import LeasePort
from jobqueue_grpc.engine.settle import Settler
from jobqueue_grpc.engine.streams import Lease, Registry, Stream
from jobqueue_grpc.engine.wakeups import WakeBus

log = logging.getLogger(__name__)


class Intake:
    def __init__(
        self,
        leases: LeasePort,
        registry: Registry,
        bus: WakeBus,
        settler: Settler,
        defaults: RetryDefaults,
        payload_max_bytes: int,
    ) -> None:
        self.leases = leases
        self.registry = registry
        self.bus = bus
        self.settler = settler
        self.defaults = defaults
        self.payload_max_bytes = payload_max_bytes

    def heard(self, s: Stream) -> None:
        """Anything from the worker: a stream gone silent is alive after all."""
        if s.silent:
            s.silent = False
            self.bus.jobs_ready()

    def complete(self, s: Stream, items: Sequence[ev.Completion]) -> None:
        for c in items:
            lease = self.held(s, c.job_id, c.token)
            if lease is None:
                continue
            if c.problem is not None:
                s.reject(c.job_id, RejectCode.INVALID, c.problem)
            elif c.result is not None and len(c.result) > self.payload_max_bytes:
                s.reject(c.job_id, RejectCode.INVALID, "result is larger than the payload limit")
            else:
                self.settler.complete(s, lease, c.result)

    def fail(self, s: Stream, items: Sequence[ev.WorkerFailure]) -> None:
        for f in items:
            lease = self.held(s, f.job_id, f.token)
            if lease is not None:
                failure = failed(
                    lease.attempt(),
                    self.defaults,
                    failure_class=f.failure_class,
                    retry_after=f.retry_after,
                    message=f.message or "failed",
                    source="worker",
                    details=f.details,
                )
                self.settler.fail(s, lease, failure)

    def cancelled(self, s: Stream, items: Sequence[ev.Held]) -> None:
        for c in items:
            lease = self.held(s, c.job_id, c.token)
            if lease is not None:
                self.settler.cancelled(s, lease)

    async def extend(self, s: Stream, items: Sequence[ev.Extension]) -> None:
        wanted = []
        for e in items:
            lease = self.held(s, e.job_id, e.token)
            if lease is not None:
                secs = clamp_lease(e.seconds) if e.seconds is not None else None
                wanted.append((lease.job.id, lease.job.lease_token, secs))
        if not wanted:
            return
        try:
            done = {x.id: x for x in await self.leases.extend(wanted)}
        except Exception as exc:  # a database blip must not end the stream: the SDK extends again
            log.warning("could not extend %d leases: %s", len(wanted), exc)
            return
        for job_id, _, _ in wanted:
            key = str(job_id)
            x = done.get(job_id)
            if x is None:
                self.registry.lost(s, key)
                continue
            held = s.leases.get(key)
            if held is not None:
                held.expires_at = x.lease_expires_at.timestamp()
            s.send(ev.LeaseExtended(key, x.lease_expires_at))
            if x.cancel_requested:  # re-deliver: a notice may have been lost
                s.send(ev.CancelNotice(key))

    async def progress(self, s: Stream, p: ev.Progress) -> None:
        lease = self.held(s, p.job_id, p.token)
        if lease is None:
            return
        if p.problem is not None or p.progress is None:
            s.reject(p.job_id, RejectCode.INVALID, p.problem or "progress is missing")
            return
        if len(p.progress) > self.payload_max_bytes:
            s.reject(p.job_id, RejectCode.INVALID, "progress is larger than the payload limit")
            return
        try:
            took = await self.leases.set_progress(lease.job.id, lease.job.lease_token, p.progress)
        except Exception as exc:  # progress is advisory: a database blip must not end the stream
            log.warning("could not record progress of %s: %s", p.job_id, exc)
            return
        if not took:
            self.registry.lost(s, p.job_id)

    def held(self, s: Stream, job_id: str, token: str) -> Lease | None:
        """The lease if this stream holds `job_id` under `token`; otherwise rejects it."""
        lease = s.leases.get(job_id)
        if lease is None:
            if token and token == str(s.expired.get(job_id)):
                s.reject(job_id, RejectCode.STALE, "the lease expired and the job moved on")
            else:
                s.reject(job_id, RejectCode.UNKNOWN, "no such job is leased on this stream")
            return None
        if token != lease.token_str:
            s.reject(job_id, RejectCode.STALE, "lease token is not the job's current lease")
            return None
        return lease
