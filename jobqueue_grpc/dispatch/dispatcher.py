"""The dispatcher: pushes jobs down Lease streams and settles what comes back, in batches.

One claim serves every waiting stream that wants the same queues and kinds: the streams' free
slots are interleaved and sent to PostgreSQL in one `claim_jobs` statement. Outcomes from all
streams are group-committed by the Settler. Wake-ups come from in-process enqueues and from
LISTEN (other replicas); a timer bounds how long a lost notification can delay a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from jobqueue_grpc import metrics
from jobqueue_grpc._aio import spawn, wait, within
from jobqueue_grpc.api import convert
from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain.errors import InvalidArgument, Unavailable
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.domain.retry import FailureClass, decide_failure
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.store import Row, Store
from jobqueue_grpc.store.leases import Failure

log = logging.getLogger(__name__)

CLAIM_MAX = 1000  # jobs per claim statement
# Claim rounds that may run at once. While one round's jobs are turned into messages (Python),
# the next round's statement runs in PostgreSQL, instead of each waiting for the other.
CLAIMERS = 2
IDLE_POLL = 1.0  # seconds: the longest a lost notification can delay a job
LISTENER_TIMEOUT = 5.0  # seconds for the listener's own queries; past it, it reconnects
HEARTBEAT_EVERY = 15.0
OVERDUE_GRACE = 10.0  # seconds past expiry before a lease nobody reaped here is let go
EXPIRED_REMEMBERED = 1024  # per stream: expired leases whose late outcomes are answered STALE


def _set_event() -> asyncio.Event:
    e = asyncio.Event()
    e.set()
    return e


class Lease:
    """What the dispatcher remembers of a job it has out on a stream: made for every job leased,
    so it keeps the claimed row and reads the rarely needed fields from it when asked."""

    __slots__ = ("expires_at", "id_str", "kind", "leased_at", "queue", "row", "token_str")

    def __init__(self, row: Row, id_str: str, token_str: str, leased_at: float) -> None:
        self.row = row
        self.id_str = id_str  # job id and token as the wire carries them, made once
        self.token_str = token_str
        self.queue: str = row["queue"]
        self.kind: str = row["kind"]
        # epoch seconds, as the database set it; refreshed by extensions
        self.expires_at: float = row["lease_expires_at_s"]
        self.leased_at = leased_at  # monotonic

    @property
    def job_id(self) -> uuid.UUID:
        job_id: uuid.UUID = self.row["id"]
        return job_id

    @property
    def token(self) -> uuid.UUID:
        token: uuid.UUID = self.row["lease_token"]
        return token

    @property
    def attempt(self) -> int:
        return int(self.row["attempt"])

    @property
    def max_attempts(self) -> int:
        return int(self.row["max_attempts"])

    @property
    def backoff_base(self) -> float | None:
        value: float | None = self.row["backoff_base"]
        return value

    @property
    def backoff_cap(self) -> float | None:
        value: float | None = self.row["backoff_cap"]
        return value

    @property
    def last_sleep(self) -> float | None:
        value: float | None = self.row["last_sleep"]
        return value


@dataclass(eq=False)
class Stream:
    """One worker's Lease stream on this replica."""

    worker_id: str
    queues: tuple[str, ...]
    kinds: tuple[str, ...] | None
    max_in_flight: int
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    leases: dict[str, Lease] = field(default_factory=dict)  # by job id string
    reserved: int = 0  # slots asked for by claim statements still running
    outbox: asyncio.Queue[w.LeaseResponse | None] = field(default_factory=asyncio.Queue)
    draining: bool = False
    closed: bool = False
    # Outcomes handed to the Settler and not yet committed or refused; `settled` is set at 0.
    pending: int = 0
    settled: asyncio.Event = field(default_factory=_set_event)
    # Leases that ended here without this stream's outcome (expired), so that a late outcome
    # is answered STALE rather than UNKNOWN; bounded, oldest dropped first.
    expired: dict[str, uuid.UUID] = field(default_factory=dict)
    # A lease expired here without a word from the worker (frozen, stuck loop, dead host with
    # the connection still up): it gets no new jobs until it sends anything, or each job it is
    # pushed would burn an attempt in turn.
    silent: bool = False

    def forget(self, job_id: str) -> Lease | None:
        """Drops the lease of `job_id` (it expired and moved on), remembering its token."""
        lease = self.leases.pop(job_id, None)
        if lease is not None:
            self.expired[job_id] = lease.token
            if len(self.expired) > EXPIRED_REMEMBERED:
                del self.expired[next(iter(self.expired))]
        return lease

    @property
    def capacity(self) -> int:
        if self.draining or self.closed or self.silent:
            return 0
        return self.max_in_flight - len(self.leases) - self.reserved

    @property
    def group(self) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        return self.queues, self.kinds

    def send(self, msg: w.LeaseResponse) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def reject(self, job_id: str, code: w.RejectReason.ValueType, reason: str) -> None:
        self.send(
            w.LeaseResponse(rejected=w.LeaseRejected(job_id=job_id, reason=reason, code=code))
        )


STALE = w.REJECT_REASON_STALE_LEASE
UNKNOWN = w.REJECT_REASON_UNKNOWN_JOB
INVALID = w.REJECT_REASON_INVALID
UNRECORDED = w.REJECT_REASON_UNSPECIFIED


def _error_json(message: str, source: str, details: dict[str, Any] | None = None) -> str:
    # jsonb cannot hold NUL; one worker's odd message must not sink the batch it is settled in
    text = message[:8192].replace("\x00", "")
    return json.dumps({"message": text, "details": details, "source": source})


class HandOff:
    """Stream slots reserved for new jobs while their insert runs (Dispatcher.hand_off)."""

    __slots__ = ("_d", "_ended", "ids", "streams")

    def __init__(self, d: Dispatcher, ids: list[uuid.UUID], streams: list[Stream | None]) -> None:
        self._d = d
        self.ids = ids  # the jobs' ids
        self.streams = streams  # per job: the stream it may go to, or None
        self._ended = False

    @property
    def slots(self) -> list[tuple[uuid.UUID, str] | None]:
        return [(s.id, s.worker_id) if s is not None else None for s in self.streams]

    def done(self, rows: Sequence[Row]) -> None:
        """After the insert committed: `rows` are the jobs it created; those leased by it (a
        paused queue's were not) are pushed to their streams."""
        self._end()
        leased = [r for r in rows if r["state"] == "running" and r["stream_id"] is not None]
        if leased:
            self._d._deliver(leased)

    def failed(self) -> None:
        """The insert raised. It may still have committed (a later statement failed, or the
        connection dropped after the commit): any job it leased is put back in the queue, since
        it was never pushed. Should that fail too, the lease expires into the retry path."""
        self._end()
        handed = [(i, s.id) for i, s in zip(self.ids, self.streams, strict=True) if s is not None]
        spawn(self._d._unlease(handed))

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        for s in self.streams:
            if s is not None:
                s.reserved -= 1
        self._d._claim_ends()


class Dispatcher:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.streams: dict[uuid.UUID, Stream] = {}
        self.draining = False
        self._wake = asyncio.Event()
        self._wake_scheduler = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None
        self._announcements = 0  # other replicas heard starting to listen (jobqueue_replicas)
        self._stopped = False  # loops check it too: never rely on cancellation alone
        self.leases_shrank = asyncio.Event()  # set whenever a lease leaves a stream
        # Clear while a claim round runs. Before a stream hears that no more jobs will come
        # (`draining`, or the answer after its own `drain`), a round under way must have pushed
        # what it claimed, so that those jobs arrive first on the stream, not after.
        self._not_claiming = _set_event()
        self._claiming = 0  # claim rounds (and hand-offs) under way
        # Hand-off bookkeeping: every wake-up that may mean new claimable jobs bumps the
        # generation; a claim that came back short records its group as drained at the
        # generation it started in. A group drained at the current generation has nothing
        # waiting that this replica knows of, so a new job may go straight to one of its streams.
        self._generation = 0
        self._drained: dict[tuple[tuple[str, ...], tuple[str, ...] | None], int] = {}
        self.settler = Settler(self)
        store.on_enqueued.append(self.enqueued)
        store.on_jobs_available.append(self.wake)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        for coro, name in (
            *((self._claim_loop(), f"claim-{i}") for i in range(CLAIMERS)),
            (self._scheduler_loop(), "scheduler"),
            (self._reaper_loop(), "reaper"),
            (self._listen_loop(), "listen"),
        ):
            self._tasks.append(asyncio.create_task(coro, name=f"dispatch-{name}"))

    async def drain(self, grace: float) -> None:
        """Shutdown: lease nothing more, tell every stream, wait up to `grace` for outcomes."""
        self.draining = True
        await wait(self._not_claiming.wait(), 5.0)
        msg = w.LeaseResponse(draining=w.Draining(grace_period=convert.duration(grace)))
        for s in list(self.streams.values()):
            s.send(msg)
        deadline = time.monotonic() + grace
        while any(s.leases for s in self.streams.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.leases_shrank.clear()
            await wait(self.leases_shrank.wait(), left)
        await wait(self.settler.idle(), max(0.1, deadline - time.monotonic()))

    async def stop(self) -> None:
        """Releases whatever is still leased here into the retry path, and stops the loops."""
        self.draining = True
        streams = list(self.streams.values())
        for s in streams:
            s.closed = True
            s.outbox.put_nowait(None)
        held = [(le.job_id, le.token) for s in streams for le in s.leases.values()]
        if held:
            try:
                await self._release(held, "server_shutdown")
            except Exception:  # the reaper of another replica (or ours, later) will expire them
                log.exception("could not release %d leases at shutdown", len(held))
        for s in streams:
            metrics.jobs_in_flight(-len(s.leases))
            s.leases.clear()
        self._stopped = True
        with contextlib.suppress(ValueError):  # stopped twice
            self.store.on_enqueued.remove(self.enqueued)
            self.store.on_jobs_available.remove(self.wake)
        self._wake.set()
        self._wake_scheduler.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.wait(self._tasks, timeout=5)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    # -- streams ----------------------------------------------------------------------------------
    def open_stream(
        self, worker_id: str, queues: Sequence[str], kinds: Sequence[str] | None, max_in_flight: int
    ) -> Stream:
        if self.draining:
            raise Unavailable("the server is draining; reconnect elsewhere", reason="DRAINING")
        s = Stream(
            worker_id=worker_id,
            queues=tuple(sorted(set(queues))),
            kinds=tuple(sorted(set(kinds))) if kinds else None,
            max_in_flight=max_in_flight,
        )
        self.streams[s.id] = s
        metrics.lease_streams(1)
        self.wake()
        return s

    async def close_stream(self, s: Stream) -> None:
        """The stream ended: every job still leased on it goes into the retry path at once."""
        if self.streams.pop(s.id, None) is None:
            return
        if not any(o.group == s.group for o in self.streams.values()):
            self._drained.pop(s.group, None)
        metrics.lease_streams(-1)
        s.closed = True
        s.outbox.put_nowait(None)
        await wait(s.settled.wait(), 10.0)  # this stream's outcomes first, then release the rest
        if s.leases:
            await self._release(
                [(le.job_id, le.token) for le in s.leases.values()], "stream_closed"
            )
            metrics.jobs_in_flight(-len(s.leases))
            s.leases.clear()
            self.leases_shrank.set()

    async def _release(self, leases: list[tuple[uuid.UUID, uuid.UUID]], source: str) -> None:
        """Ends these (job id, lease token) leases as failed attempts; stale ones are skipped."""
        message = {
            "stream_closed": "the worker's stream ended before the job finished",
            "server_shutdown": "the server shut down before the job finished",
        }[source]
        rows = await self.store.leases.release(
            leases, lambda r: self._decide_lost(r, message, source)
        )
        _count_failures(rows)

    def _decide_lost(self, r: Row, message: str, source: str) -> Failure:
        """A lease that ended without an outcome is a failed attempt (retry path)."""
        d = decide_failure(
            attempt=r["attempt"],
            max_attempts=r["max_attempts"],
            failure_class=FailureClass.RETRY,
            base=_or(r["backoff_base"], self.settings.backoff_base),
            cap=_or(r["backoff_cap"], self.settings.backoff_cap),
            prev_sleep=r["last_sleep"],
        )
        return Failure(
            r["id"], r["lease_token"], d.state.value, d.delay, _error_json(message, source)
        )

    def wake(self, queues: Iterable[str] = ()) -> None:
        self._generation += 1
        self._wake.set()

    def enqueued(self, rows: Sequence[Row]) -> None:
        """In-process wake-up after an enqueue commits (other replicas hear NOTIFY)."""
        if any(r["state"] == "queued" for r in rows):
            self.wake()
        if any(r["state"] == "scheduled" for r in rows):
            self._wake_scheduler.set()  # it may now be due sooner than the scheduler planned

    def wake_scheduler(self) -> None:
        self._wake_scheduler.set()

    # -- the claim --------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while not self._stopped:
            woken = await wait(self._wake.wait(), IDLE_POLL)
            if woken and not self._wake.is_set():
                continue  # another claim loop took this wake-up: one round serves it
            self._wake.clear()
            if self.draining:
                continue
            self._claim_begins()
            try:
                if await self._claim_round():
                    self._wake.set()  # a claim came back full: there may be more
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("claim failed; retrying")
                await asyncio.sleep(0.5)
            finally:
                self._claim_ends()

    def _claim_begins(self) -> None:
        self._claiming += 1
        self._not_claiming.clear()

    def _claim_ends(self) -> None:
        self._claiming -= 1
        if self._claiming == 0:
            self._not_claiming.set()

    async def _claim_round(self) -> bool:
        groups: dict[tuple[tuple[str, ...], tuple[str, ...] | None], list[Stream]] = {}
        for s in self.streams.values():
            if s.capacity > 0:
                groups.setdefault(s.group, []).append(s)
        full = False
        for (queues, kinds), streams in groups.items():
            slots = _interleave(streams, CLAIM_MAX)
            if not slots:  # another round took the room while this one waited
                continue
            # The room asked for is reserved until the statement returns, so that a round
            # running alongside asks only for what is left.
            for s in slots:
                s.reserved += 1
            generation = self._generation
            try:
                rows = await self.store.leases.claim(
                    queues, kinds, [(s.id, s.worker_id) for s in slots]
                )
            finally:
                for s in slots:
                    s.reserved -= 1
            if len(rows) < len(slots):
                self._drained[(queues, kinds)] = generation
            else:
                self._drained.pop((queues, kinds), None)
            if rows:
                self._deliver(rows)
            full = full or len(rows) == len(slots)
        return full

    # -- hand-off: a new job straight to a waiting stream (the Enqueuer asks) -----------------
    def waiting(self, queue: str, kind: str) -> bool:
        """A stream here has room for such a job and nothing known to claim: one enqueued now
        would be handed off to it."""
        return any(
            self._drained.get(s.group) == self._generation
            and s.capacity > 0
            and queue in s.queues
            and (s.kinds is None or kind in s.kinds)
            for s in self.streams.values()
        )

    def hand_off(self, jobs: Sequence[NewJob]) -> HandOff | None:
        """Slots on streams that wait with nothing to claim, for those of `jobs` they take.

        The jobs are then inserted already leased (store insert_jobs): the claim that would
        have picked them next is skipped. Only streams whose group's last claim came back short
        since the last wake-up qualify, so nothing older is waiting for them; several new jobs
        go in the claim's order. The slots stay reserved until `HandOff.done` or `failed`.
        """
        if self.draining or not self._drained:
            return None
        current = self._generation
        streams = [
            s
            for s in self.streams.values()
            if self._drained.get(s.group) == current and s.capacity > 0
        ]
        if not streams:
            return None
        now = datetime.now(UTC)
        slots: list[Stream | None] = [None] * len(jobs)
        # the claim's order: priority, run_at (now when not given), id (UUIDv7: enqueue order)
        order = sorted(
            range(len(jobs)), key=lambda i: (jobs[i].priority, jobs[i].run_at or now, jobs[i].id)
        )
        for i in order:
            j = jobs[i]
            if j.run_at is not None and j.run_at > now:
                continue
            best: Stream | None = None
            for s in streams:
                if (
                    j.queue in s.queues
                    and (s.kinds is None or j.kind in s.kinds)
                    and s.capacity > 0
                    and (best is None or s.capacity > best.capacity)
                ):
                    best = s
            if best is not None:
                best.reserved += 1
                slots[i] = best
        if not any(slots):
            return None
        self._claim_begins()  # a drain waits for these jobs to be pushed, as for a claim
        return HandOff(self, [j.id for j in jobs], slots)

    async def _unlease(self, handed: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        try:
            if await self.store.leases.unlease_handed_off(handed):
                self.store.jobs_available()
        except Exception:
            log.warning("could not put back %d handed-off jobs", len(handed), exc_info=True)

    def _deliver(self, rows: list[Row]) -> None:
        """Pushes claimed rows (store/queries.py LEASED_COLUMNS) down their streams."""
        now = time.time()
        leased_at = time.monotonic()
        # one message per stream, each job built in place in it (no copies of the Job)
        batches: dict[uuid.UUID, tuple[Stream, w.LeaseResponse]] = {}
        waits: dict[tuple[str, str], list[float]] = {}
        orphans: list[Row] = []
        for r in rows:
            s = self.streams.get(r["stream_id"])
            if s is None or s.closed:
                orphans.append(r)
                continue
            job_id = str(r["id"])
            token = str(r["lease_token"])
            lease = s.leases[job_id] = Lease(r, job_id, token, leased_at)
            batch = batches.get(s.id)
            if batch is None:
                batch = batches[s.id] = (s, w.LeaseResponse())
            leased = batch[1].jobs.jobs.add(lease_token=token)
            convert.fill_leased_job(leased.job, r)
            convert.set_epoch(leased.lease_expires_at, lease.expires_at)
            waits.setdefault((lease.queue, lease.kind), []).append(now - r["run_at_s"])
        for (queue, kind), seconds in waits.items():
            metrics.observe_wait(queue, kind, seconds)
        metrics.jobs_in_flight(len(rows) - len(orphans))
        for s, msg in batches.values():
            s.send(msg)
        if orphans:  # the stream closed while the claim ran: release them now
            spawn(self._release([(r["id"], r["lease_token"]) for r in orphans], "stream_closed"))

    # -- what workers send ----------------------------------------------------------------------
    async def handle(self, s: Stream, req: w.LeaseRequest) -> None:
        if s.silent:  # the worker is alive after all
            s.silent = False
            self.wake()
        which = req.WhichOneof("msg")
        if which == "complete":
            for c in req.complete.jobs:
                lease = self._held(s, c.job_id, c.lease_token)
                if lease is None:
                    continue
                try:
                    result = (
                        convert.struct_to_json("result", c.result) if c.HasField("result") else None
                    )
                except Exception:
                    s.reject(c.job_id, INVALID, "result is not valid JSON")
                    continue
                if result is not None and len(result) > self.settings.payload_max_bytes:
                    s.reject(c.job_id, INVALID, "result is larger than the payload limit")
                    continue
                self.settler.complete(s, lease, result)
        elif which == "fail":
            for f in req.fail.jobs:
                lease = self._held(s, f.job_id, f.lease_token)
                if lease is not None:
                    self.settler.fail(s, lease, self._decide_worker_failure(lease, f))
        elif which == "cancelled":
            for cj in req.cancelled.jobs:
                lease = self._held(s, cj.job_id, cj.lease_token)
                if lease is not None:
                    self.settler.cancelled(s, lease)
        elif which == "extend":
            await self._extend(s, req.extend)
        elif which == "progress":
            await self._progress(s, req.progress)
        elif which == "heartbeat":
            s.send(w.LeaseResponse(heartbeat=w.Heartbeat()))
        elif which == "drain":
            # Requests are handled in order: anything the worker sends after `drain` (the SDK
            # sends a heartbeat) is answered after every job this stream will ever get.
            s.draining = True
            await wait(self._not_claiming.wait(), 5.0)
        else:  # a second `open`, or a case this server does not know
            raise InvalidArgument(
                f"unexpected message {which!r} on an open stream", reason="PROTOCOL_VIOLATION"
            )

    def _held(self, s: Stream, job_id: str, token: str) -> Lease | None:
        """The lease if this stream holds `job_id` under `token`; otherwise rejects it."""
        lease = s.leases.get(job_id)
        if lease is None:
            if token and token == str(s.expired.get(job_id)):
                s.reject(job_id, STALE, "the lease expired and the job moved on")
            else:
                s.reject(job_id, UNKNOWN, "no such job is leased on this stream")
            return None
        if token != lease.token_str:
            s.reject(job_id, STALE, "lease token is not the job's current lease")
            return None
        return lease

    def _decide_worker_failure(self, lease: Lease, f: w.FailedJob) -> Failure:
        cls = {
            w.FAILURE_CLASS_DO_NOT_RETRY: FailureClass.DO_NOT_RETRY,
            w.FAILURE_CLASS_RETRY_AFTER: FailureClass.RETRY_AFTER,
        }.get(f.failure_class, FailureClass.RETRY)
        retry_after = convert.seconds(f.retry_after) if f.HasField("retry_after") else None
        d = decide_failure(
            attempt=lease.attempt,
            max_attempts=lease.max_attempts,
            failure_class=cls,
            base=_or(lease.backoff_base, self.settings.backoff_base),
            cap=_or(lease.backoff_cap, self.settings.backoff_cap),
            prev_sleep=lease.last_sleep,
            retry_after=min(retry_after, 30 * 86400.0) if retry_after is not None else None,
        )
        details: dict[str, Any] | None = None
        if f.error.HasField("details"):
            with contextlib.suppress(Exception):
                details = json.loads(convert.struct_to_json("details", f.error.details))
        return Failure(
            lease.job_id,
            lease.token,
            d.state.value,
            d.delay,
            _error_json(f.error.message or "failed", "worker", details),
        )

    async def _extend(self, s: Stream, msg: w.LeaseExtend) -> None:
        items = []
        for e in msg.jobs:
            lease = self._held(s, e.job_id, e.lease_token)
            if lease is None:
                continue
            secs = convert.seconds(e.extend_by) if e.HasField("extend_by") else None
            if secs is not None:
                secs = min(max(secs, 1.0), 24 * 3600.0)
            items.append((lease.job_id, lease.token, secs))
        if not items:
            return
        try:
            rows = {r["id"]: r for r in await self.store.leases.extend(items)}
        except Exception:  # a database blip must not end the stream: the SDK extends again soon
            log.warning("could not extend %d leases", len(items), exc_info=True)
            return
        for job_id, _, _ in items:
            r = rows.get(job_id)
            if r is None:
                self._lost(s, str(job_id))
                continue
            held = s.leases.get(str(job_id))
            if held is not None:
                held.expires_at = r["lease_expires_at"].timestamp()
            ext = w.LeaseExtended(job_id=str(job_id))
            convert.set_time(ext.lease_expires_at, r["lease_expires_at"])
            s.send(w.LeaseResponse(extended=ext))
            if r["cancel_requested"]:  # re-deliver: a notice may have been lost
                s.send(w.LeaseResponse(cancel=w.CancelNotice(job_id=str(job_id))))

    async def _progress(self, s: Stream, p: w.LeaseProgress) -> None:
        lease = self._held(s, p.job_id, p.lease_token)
        if lease is None:
            return
        try:
            text = convert.struct_to_json("progress", p.progress)
        except Exception:
            s.reject(p.job_id, INVALID, "progress is not valid JSON")
            return
        if len(text) > self.settings.payload_max_bytes:
            s.reject(p.job_id, INVALID, "progress is larger than the payload limit")
            return
        try:
            took = await self.store.leases.set_progress(lease.job_id, lease.token, text)
        except Exception:  # progress is advisory: a database blip must not end the stream
            log.warning("could not record progress of %s", p.job_id, exc_info=True)
            return
        if not took:
            self._lost(s, p.job_id)

    def _lost(self, s: Stream, job_id: str) -> None:
        """The database says this stream's lease is gone (expired and moved on)."""
        if s.forget(job_id) is not None:
            metrics.jobs_in_flight(-1)
            self.leases_shrank.set()
            self.wake()
        s.reject(job_id, STALE, "the lease expired and the job moved on")

    # -- scheduler, reaper, notifications ---------------------------------------------------------
    async def _scheduler_loop(self) -> None:
        """Promotes due scheduled and retrying jobs so they are claimed on time."""
        while not self._stopped:
            delay = IDLE_POLL
            self._wake_scheduler.clear()  # before the pass: a wake-up during it is kept
            try:
                promoted, queues = await self.store.leases.promote_due(CLAIM_MAX)
                if queues:  # every dispatcher on this store (they ignore its NOTIFY)
                    self.store.jobs_available()
                if promoted >= CLAIM_MAX:
                    delay = 0.0
                else:
                    nxt = await self.store.leases.next_parked_due()
                    if nxt is not None:
                        delay = min(
                            IDLE_POLL, max(0.005, (nxt - datetime.now(UTC)).total_seconds())
                        )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler pass failed")
            await wait(self._wake_scheduler.wait(), delay)

    async def _reaper_loop(self) -> None:
        """Expired leases (on any replica) become failed attempts; SKIP LOCKED splits the work."""
        while not self._stopped:
            await asyncio.sleep(self.settings.reaper_interval)
            try:
                while True:
                    rows = await self.store.leases.expire(500, self._decide_expired)
                    if not rows:
                        break
                    _count_failures(rows)
                    for r in rows:
                        self._forget(str(r["id"]))
                    self.wake()
                self._forget_overdue()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper pass failed")

    def _decide_expired(self, r: Row) -> Failure:
        return self._decide_lost(r, "the lease expired without an outcome", "lease_expired")

    def _forget_overdue(self) -> None:
        """Leases long past expiry that no reaper here saw end (another replica's reaper expired
        them, and the worker never spoke of them again): let go, or their slots stay lost."""
        cutoff = time.time() - OVERDUE_GRACE
        for s in self.streams.values():
            for le in [le for le in s.leases.values() if le.expires_at < cutoff]:
                if s.forget(le.id_str) is not None:
                    s.silent = True
                    metrics.jobs_in_flight(-1)
                    self.leases_shrank.set()

    def _forget(self, job_id: str) -> None:
        for s in self.streams.values():
            if s.forget(job_id) is not None:
                s.silent = True
                metrics.jobs_in_flight(-1)
                self.leases_shrank.set()

    async def _listen_loop(self) -> None:
        """LISTEN for enqueues and cancels from every replica; reconnects when the link drops.

        It also keeps `store.peers`: whether any other replica listens, so that enqueues here
        NOTIFY only when someone else needs the wake-up. A replica that starts listening says so
        on `jobqueue_replicas` (the others start notifying at once); every IDLE_POLL the count of
        other listeners is read again, which notices replicas that went away.
        """
        peers = self.store.peers
        while not self._stopped:
            try:
                conn = self._listener = await self.store.listener()
                await conn.add_listener("jobqueue_jobs", self._on_jobs)
                await conn.add_listener("jobqueue_cancel", self._on_cancel)
                await conn.add_listener("jobqueue_replicas", self._on_replica)
                await self.store.announce_listener(conn)
                while not conn.is_closed():
                    announced = self._announcements
                    others = await within(self.store.other_listeners(conn), LISTENER_TIMEOUT)
                    # an announcement heard while counting is newer than the count
                    peers.listening = others > 0 or self._announcements != announced
                    await asyncio.sleep(IDLE_POLL)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
                await asyncio.sleep(1.0)
            finally:
                peers.listening = True  # unknown while not listening: tell everyone
                if self._listener is not None:
                    with contextlib.suppress(Exception):
                        await self._listener.close()
                    self._listener = None

    def _on_jobs(self, _conn: Any, pid: int, _channel: str, payload: object) -> None:
        if pid in self.store.backends:
            return  # sent by this process, which woke its claim when it committed
        self.wake((str(payload),))

    def _on_replica(self, _conn: Any, pid: int, _channel: str, _payload: object) -> None:
        if pid not in self.store.backends and pid != self._listener_pid():
            self._announcements += 1
            self.store.peers.listening = True  # another replica started listening

    def _listener_pid(self) -> int | None:
        return self._listener.get_server_pid() if self._listener is not None else None

    def _on_cancel(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        job_id, _, stream_id = str(payload).partition(" ")
        with contextlib.suppress(ValueError):
            s = self.streams.get(uuid.UUID(stream_id))
            if s is not None and job_id in s.leases:
                s.send(w.LeaseResponse(cancel=w.CancelNotice(job_id=job_id)))


class Settler:
    """Group-commits outcomes from every stream: while one transaction runs, the next fills."""

    def __init__(self, d: Dispatcher, concurrency: int = 2) -> None:
        self.d = d
        self._completes: list[tuple[Stream, Lease, str | None]] = []
        self._cancels: list[tuple[Stream, Lease]] = []
        self._fails: list[tuple[Stream, Lease, Failure]] = []
        self._running = 0
        self._concurrency = concurrency
        self._idle = asyncio.Event()
        self._idle.set()
        self._refill = False  # a full stream got room back: see _release_slot

    def complete(self, s: Stream, lease: Lease, result: str | None) -> None:
        self._completes.append((s, lease, result))
        self._kick(s)

    def cancelled(self, s: Stream, lease: Lease) -> None:
        self._cancels.append((s, lease))
        self._kick(s)

    def fail(self, s: Stream, lease: Lease, f: Failure) -> None:
        self._fails.append((s, lease, f))
        self._kick(s)

    async def idle(self) -> None:
        """Returns once every outcome handed in so far is committed (or refused)."""
        while not self._idle.is_set():
            await self._idle.wait()

    def _kick(self, s: Stream) -> None:
        s.pending += 1
        s.settled.clear()
        self._idle.clear()
        if self._running < self._concurrency:
            self._running += 1
            spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self._completes or self._cancels or self._fails:
                completes, self._completes = self._completes, []
                cancels, self._cancels = self._cancels, []
                fails, self._fails = self._fails, []
                try:
                    done = await self.d.store.leases.settle(
                        [(le.job_id, le.token, res) for _, le, res in completes],
                        [(le.job_id, le.token) for _, le in cancels],
                        [f for _, _, f in fails],
                    )
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Some may have landed, some not: the stream lets go of all of them (else
                    # their slots were lost for good); any lease still current in the database
                    # expires into the retry path.
                    log.exception("could not record %d outcomes", len(completes + cancels + fails))
                    released = 0
                    for s, le in [(s, le) for s, le, _ in completes + fails] + cancels:
                        released += self._release_slot(s, le)
                        s.reject(le.id_str, UNRECORDED, "the server could not record it")
                        self._settled(s)
                    self._released(released)
                    continue
                now = time.monotonic()
                runs: dict[tuple[str, str], list[float]] = {}
                released = 0
                for s, le, _ in completes:
                    released += self._finish(s, le, le.job_id in done.completed, now, runs)
                for s, le in cancels:
                    released += self._finish(s, le, le.job_id in done.cancelled, now, runs)
                failed = {r["id"] for r in done.failed}
                for s, le, _ in fails:
                    released += self._finish(s, le, le.job_id in failed, now, runs)
                for s in [s for s, _, _ in completes + fails] + [s for s, _ in cancels]:
                    self._settled(s)
                for (queue, kind), seconds in runs.items():
                    metrics.observe_run(queue, kind, seconds)
                _count_by_kind(metrics.completed, (le for _, le, _ in completes), done.completed)
                _count_by_kind(metrics.cancelled, (le for _, le in cancels), done.cancelled)
                _count_failures(done.failed)
                self._released(released)
        finally:
            self._running -= 1
            if self._running == 0 and not (self._completes or self._cancels or self._fails):
                self._idle.set()

    def _settled(self, s: Stream) -> None:
        s.pending -= 1
        if s.pending <= 0:
            s.pending = 0
            s.settled.set()

    def _release_slot(self, s: Stream, le: Lease) -> int:
        """Frees the stream's slot of `le` (1), unless it went already (0); see _released."""
        if s.leases.get(le.id_str) is le:
            if s.capacity <= 0:
                # The stream was full, so a claim may have passed it by: claim again once this
                # batch is settled. (A stream with room got every job there was already; a job
                # enqueued since wakes the claim on its own.)
                self._refill = True
            del s.leases[le.id_str]
            return 1
        return 0

    def _released(self, n: int) -> None:
        """`n` slots were freed: count them once, and let the claim and drain loops know."""
        if n:
            metrics.jobs_in_flight(-n)
            self.d.leases_shrank.set()
        if self._refill:
            self._refill = False
            self.d.wake()

    def _finish(
        self,
        s: Stream,
        le: Lease,
        took: bool,
        now: float,
        runs: dict[tuple[str, str], list[float]],
    ) -> int:
        released = self._release_slot(s, le)
        if took:
            runs.setdefault((le.queue, le.kind), []).append(now - le.leased_at)
        else:
            s.reject(le.id_str, STALE, "the lease expired and the job moved on")
        return released


def _count_by_kind(
    count: Callable[[str, str, int], None], leases: Iterable[Lease], took: set[uuid.UUID]
) -> None:
    """Counts, once per queue and kind, the leases whose outcome took effect."""
    n: dict[tuple[str, str], int] = {}
    for le in leases:
        if le.job_id in took:
            n[(le.queue, le.kind)] = n.get((le.queue, le.kind), 0) + 1
    for (queue, kind), k in n.items():
        count(queue, kind, k)


def _count_failures(rows: Iterable[Row]) -> None:
    for r in rows:
        metrics.failed(r["queue"], r["kind"])
        if r["state"] == "retrying":
            metrics.retried(r["queue"], r["kind"])
        elif r["state"] == "failed":
            metrics.dead_lettered(r["queue"], r["kind"])
        elif r["state"] == "cancelled":
            metrics.cancelled(r["queue"], r["kind"])


def _interleave(streams: list[Stream], limit: int) -> list[Stream]:
    """One slot per free place, round-robin across streams, so a short claim is shared fairly."""
    caps = {s.id: s.capacity for s in streams}
    out: list[Stream] = []
    while len(out) < limit and any(caps.values()):
        for s in streams:
            if caps[s.id] > 0 and len(out) < limit:
                out.append(s)
                caps[s.id] -= 1
    return out


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
