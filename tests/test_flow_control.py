"""Flow control (issue 14) on three replicas, each with its own Store on one database, and
several Lease streams per replica: per-key and queue-wide running caps, rate limits, fair
share, limits changed while running, and limited jobs whose worker dies.

Every cap is checked two ways, continuously: each worker stream records, as jobs arrive and as
it completes them, how many it holds per key (all streams together: what workers see), and a
sampler reads the jobs table over and over (what PostgreSQL holds as running). Workers "work"
on a job by holding it for a few milliseconds; that is the load, not synchronisation: every
wait on an outcome polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2 as ds
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2_grpc as dsg
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qs
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qsg
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from tests import conftest
from tests.lease_helpers import RawWorker
from tests.support import wait_for_value

Replica = tuple[JobQueueServer, Store, grpc.aio.Channel]
WORK = 0.01  # seconds a worker holds each job (the load)


@pytest.fixture
async def replicas(db_url: str) -> AsyncIterator[Callable[..., Awaitable[list[Replica]]]]:
    started: list[Replica] = []

    async def start(n: int = 3, **settings: Any) -> list[Replica]:
        for _ in range(n):
            store = await Store.connect(db_url, min_size=1, max_size=4)
            srv = JobQueueServer(conftest.test_settings(db_url, **settings), store)
            await srv.start()
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
            started.append((srv, store, ch))
        return started[-n:]

    yield start
    for srv, store, ch in started:
        await ch.close()
        await srv.stop()
        await store.close()


async def set_limits(ch: grpc.aio.Channel, queue: str, **limits: Any) -> qs.Queue:
    resp = await qsg.QueueServiceStub(ch).SetQueueLimits(
        qs.SetQueueLimitsRequest(name=queue, limits=qs.QueueLimits(**limits))
    )
    return resp.queue


async def enqueue(ch: grpc.aio.Channel, queue: str, keys: list[str | None]) -> list[str]:
    reqs = [js.EnqueueRequest(queue=queue, kind="work", concurrency_key=k or "") for k in keys]
    resp = await jsg.JobServiceStub(ch).EnqueueBatch(js.EnqueueBatchRequest(jobs=reqs))
    return [r.job.id for r in resp.results]


@dataclass
class Fleet:
    """Worker streams on every replica, sharing one view of what they hold."""

    keys: dict[str, str] = field(default_factory=dict)  # job id -> concurrency key ('' none)
    holding: Counter[str] = field(default_factory=Counter)  # key -> jobs held now
    most: Counter[str] = field(default_factory=Counter)  # key -> most ever held at once
    total_most: int = 0
    started: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, job id)
    done: set[str] = field(default_factory=set)
    hold: asyncio.Event | None = None  # while clear, workers keep what they hold
    workers: list[RawWorker] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ids_keys: dict[str, str] = field(default_factory=dict)  # job id -> key, as enqueued
    enqueued: asyncio.Event = field(default_factory=asyncio.Event)

    async def enqueue(self, ch: grpc.aio.Channel, queue: str, keys: list[str | None]) -> list[str]:
        """Enqueues and records each job's key as enqueued (what the workers count by)."""
        ids = await enqueue(ch, queue, keys)
        self.ids_keys.update(zip(ids, (k or "" for k in keys), strict=True))
        self.enqueued.set()
        return ids

    async def key_of(self, job_id: str) -> str:
        while job_id not in self.ids_keys:  # delivered before the enqueue's answer arrived
            self.enqueued.clear()
            await self.enqueued.wait()
        return self.ids_keys[job_id]

    async def start(self, replicas: list[Replica], queue: str, per_replica: int = 2) -> None:
        for _srv, _store, ch in replicas:
            for i in range(per_replica):
                wk = await RawWorker(ch).open(queues=(queue,), max_in_flight=8, worker_id=f"w{i}")
                self.workers.append(wk)
                self.tasks.append(asyncio.create_task(self._run(wk)))

    async def _run(self, wk: RawWorker) -> None:
        writing = asyncio.Lock()  # one write at a time on a stream

        async def one(lj: w.LeasedJob) -> None:
            key = self.keys.get(lj.job.id) or await self.key_of(lj.job.id)
            self.keys[lj.job.id] = key
            self.holding[key] += 1
            self.most[key] = max(self.most[key], self.holding[key])
            self.total_most = max(self.total_most, sum(self.holding.values()))
            self.started.append((time.monotonic(), lj.job.id))
            await asyncio.sleep(WORK)  # the work
            if self.hold is not None:
                await self.hold.wait()
            self.holding[key] -= 1  # before the outcome leaves: the server may re-lease at once
            async with writing:
                await wk.complete(lj)
            self.done.add(lj.job.id)

        while True:
            lj = await wk.jobs.get()
            self.tasks.append(asyncio.create_task(one(lj)))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for wk in self.workers:
            wk.call.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def fleet(replicas: list[Replica], queue: str, per_replica: int = 2) -> AsyncIterator[Fleet]:
    f = Fleet()
    await f.start(replicas, queue, per_replica)
    try:
        yield f
    finally:
        await f.stop()


@contextlib.asynccontextmanager
async def sampler(db_url: str, queue: str) -> AsyncIterator[dict[str, Any]]:
    """Reads the running jobs of `queue` per key, over and over, keeping the most seen."""
    seen: dict[str, Any] = {"by_key": Counter(), "total": 0, "samples": 0}
    stop = asyncio.Event()
    db = await asyncpg.connect(db_url)

    async def run() -> None:
        while not stop.is_set():
            rows = await db.fetch(
                "SELECT coalesce(concurrency_key, '') AS k, count(*) AS n FROM jobqueue.jobs "
                "WHERE queue = $1 AND state = 'running' GROUP BY 1",
                queue,
            )
            for r in rows:
                seen["by_key"][r["k"]] = max(seen["by_key"][r["k"]], r["n"])
            seen["total"] = max(seen["total"], sum(r["n"] for r in rows))
            seen["samples"] += 1

    task = asyncio.create_task(run())
    try:
        yield seen
    finally:
        stop.set()
        await task
        await db.close()


async def counters(db: asyncpg.Connection, queue: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT key, running FROM jobqueue.running_counts WHERE queue = $1 AND running <> 0",
        queue,
    )
    return {r["key"]: r["running"] for r in rows}


async def all_done(f: Fleet, n: int, within: float = 30) -> None:
    async def probe() -> int:
        return len(f.done)

    await wait_for_value(probe, lambda d: d >= n, within=within, what=f"{n} jobs done")


async def test_never_more_than_n_running_per_key_across_replicas(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection, db_url: str
) -> None:
    reps = await replicas(3)
    ch = reps[0][2]
    await set_limits(ch, "tenants", key_max_running=2)
    keys = [f"t{i % 4}" for i in range(80)] + [None] * 10  # keyless jobs are not capped per key
    async with sampler(db_url, "tenants") as seen, fleet(reps, "tenants") as f:
        await f.enqueue(ch, "tenants", keys)
        await all_done(f, len(keys))
    assert seen["samples"] > 0
    assert max(f.most[f"t{i}"] for i in range(4)) <= 2  # what the workers held at once
    assert max(seen["by_key"][f"t{i}"] for i in range(4)) <= 2  # what PostgreSQL held
    assert f.most["t0"] == 2  # the cap was reached, not just respected by a slow claim
    await wait_for_value(lambda: counters(db, "tenants"), lambda c: c == {}, what="counters at 0")


async def test_never_more_than_n_running_in_the_queue(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection, db_url: str
) -> None:
    reps = await replicas(3)
    ch = reps[1][2]
    await set_limits(ch, "capped", max_running=3)
    async with sampler(db_url, "capped") as seen, fleet(reps, "capped") as f:
        await f.enqueue(ch, "capped", [None] * 40 + ["k1"] * 20)
        await all_done(f, 60)
    assert f.total_most <= 3
    assert seen["total"] <= 3
    assert f.total_most == 3
    await wait_for_value(lambda: counters(db, "capped"), lambda c: c == {}, what="counters at 0")


async def test_starts_stay_within_the_rate(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    """Tolerance: over any window of T seconds at most burst + rate * T jobs start (the token
    bucket's bound), measured on PostgreSQL's clock (started_at), plus one job for the
    microsecond rounding of a window's edges."""
    reps = await replicas(3)
    ch = reps[2][2]
    rate, burst = 25.0, 5.0
    await set_limits(ch, "paced", rate=rate, burst=burst)
    async with fleet(reps, "paced") as f:
        await f.enqueue(ch, "paced", [None] * 30 + ["a"] * 10)
        await all_done(f, 40)
    starts = [
        r[0]
        for r in await db.fetch(
            "SELECT date_part('epoch', started_at) FROM jobqueue.jobs WHERE queue = 'paced' "
            "ORDER BY started_at"
        )
    ]
    assert len(starts) == 40
    for i, t0 in enumerate(starts):
        for j in range(i, len(starts)):
            window = starts[j] - t0
            assert j - i + 1 <= burst + rate * window + 1, (i, j, window)


async def test_key_rate_limits_each_key(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    reps = await replicas(3)
    ch = reps[0][2]
    rate, burst = 20.0, 2.0
    await set_limits(ch, "keypaced", key_rate=rate, key_burst=burst)
    async with fleet(reps, "keypaced") as f:
        await f.enqueue(ch, "keypaced", ["x"] * 12 + ["y"] * 12)
        await all_done(f, 24)
    for key in ("x", "y"):
        starts = [
            r[0]
            for r in await db.fetch(
                "SELECT date_part('epoch', started_at) FROM jobqueue.jobs "
                "WHERE queue = 'keypaced' AND concurrency_key = $1 ORDER BY started_at",
                key,
            )
        ]
        for i, t0 in enumerate(starts):
            for j in range(i, len(starts)):
                assert j - i + 1 <= burst + rate * (starts[j] - t0) + 1, (key, i, j)


async def test_a_small_key_starts_before_a_big_backlog_drains(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    reps = await replicas(3)
    ch = reps[0][2]
    await set_limits(ch, "shared", fair_share=True)
    big = await enqueue(ch, "shared", ["big"] * 400)  # enqueued first: older, same priority
    small = await enqueue(ch, "shared", ["small"] * 5)
    async with fleet(reps, "shared", per_replica=1) as f:
        f.ids_keys.update({**dict.fromkeys(big, "big"), **dict.fromkeys(small, "small")})
        f.enqueued.set()
        await all_done(f, 405, within=60)
    order = [job for _, job in sorted(f.started)]
    last_small = max(order.index(j) for j in small)
    # Round-robin: the small key's 5 jobs go out alongside the big key's first ones, not after
    # its 400. Each claim takes at most as many of big's as it has slots (3 streams x 8).
    assert last_small < 5 * 2 * 3 * 8, last_small
    assert sum(1 for j in order[: last_small + 1] if j in set(big)) < 400


async def test_limits_changed_while_running_take_effect_within_a_second(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    reps = await replicas(3)
    ch = reps[0][2]
    await set_limits(ch, "live", key_max_running=1)
    async with fleet(reps, "live") as f:
        f.hold = asyncio.Event()  # workers keep every job until the test lets go
        await f.enqueue(ch, "live", ["k"] * 10)

        async def holding() -> int:
            return f.holding["k"]

        await wait_for_value(holding, lambda n: n == 1, what="one job of k running")
        # another replica raises the cap: every replica claims the room within a second
        queue = await set_limits(reps[2][2], "live", key_max_running=4)
        assert queue.limits.key_max_running == 4
        await wait_for_value(holding, lambda n: n == 4, within=1.0, what="four jobs of k running")
        # and lowering it holds new starts back until the running ones end
        await set_limits(reps[1][2], "live", key_max_running=2)
        f.hold.set()
        await all_done(f, 10)
    await wait_for_value(lambda: counters(db, "live"), lambda c: c == {}, what="counters at 0")


async def test_a_dead_worker_releases_its_limited_jobs(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    """Stream closed (the worker process died) and lease expired (it hung): either way the
    key's counter comes back down and its jobs run elsewhere, nothing lost or stuck."""
    reps = await replicas(3, reaper_interval=0.2)
    a, b, c = (r[2] for r in reps)
    await set_limits(a, "fragile", key_max_running=1)
    stub = jsg.JobServiceStub(a)
    quick = job_pb2.RetryPolicy(
        backoff_base={"nanos": 50_000_000}, backoff_cap={"nanos": 100_000_000}
    )
    ids = [
        (
            await stub.Enqueue(
                js.EnqueueRequest(
                    queue="fragile",
                    kind="work",
                    concurrency_key="solo",
                    lease_duration={"seconds": 1},
                    retry_policy=quick,
                    priority=p,
                )
            )
        ).job.id
        for p in (0, 1)
    ]
    dying = await RawWorker(a).open(queues=("fragile",))
    assert (await dying.next_job()).job.id == ids[0]
    assert await counters(db, "fragile") == {"": 1, "solo": 1}
    dying.call.cancel()  # dies holding it: the stream's end releases the lease and the counter

    hung = await RawWorker(b).open(queues=("fragile",), max_in_flight=1)
    held = await hung.next_job()  # on another replica, at once: the key was not left full
    assert held.job.id in ids
    assert await counters(db, "fragile") == {"": 1, "solo": 1}
    # `hung` never answers: its lease expires after 1 s (the reaper ends it and the counter
    # goes down), and a healthy worker runs both jobs
    healthy = await RawWorker(c).open(queues=("fragile",))
    done: set[str] = set()

    async def finish() -> set[str]:
        with contextlib.suppress(TimeoutError):
            lj = await healthy.next_job(within=0.2)
            await healthy.complete(lj)
            done.add(lj.job.id)
        return done

    await wait_for_value(finish, lambda d: set(ids) <= d, within=30, what="both jobs done")
    await wait_for_value(lambda: counters(db, "fragile"), lambda c: c == {}, what="counters at 0")
    for wk in (hung, healthy):
        wk.call.cancel()


async def test_get_job_says_why_a_job_waits(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    (rep,) = await replicas(1)
    ch = rep[2]
    stub = jsg.JobServiceStub(ch)

    async def reason(job_id: str) -> tuple[int, str]:
        j = (await stub.GetJob(js.GetJobRequest(id=job_id))).job
        return j.state, j.held_reason

    await set_limits(ch, "held", key_max_running=1)
    ids = await enqueue(ch, "held", ["k", "k"])
    # one job at a time: once the limits are cleared, nothing may take the third job
    wk = await RawWorker(ch).open(queues=("held",), max_in_flight=1)
    running = await wk.next_job()
    waiting = next(i for i in ids if i != running.job.id)
    assert await reason(waiting) == (job_pb2.JOB_STATE_QUEUED, "concurrency_key limit")
    assert (await stub.GetJob(js.GetJobRequest(id=waiting))).job.concurrency_key == "k"

    await set_limits(ch, "held", max_running=1)
    assert await reason(waiting) == (job_pb2.JOB_STATE_QUEUED, "queue limit")

    await set_limits(ch, "held", rate=0.001, burst=1)  # the one token is spent below
    await wk.complete(running)
    nxt = await wk.next_job()
    assert nxt.job.id == waiting
    (third,) = await enqueue(ch, "held", [None])
    assert await reason(third) == (job_pb2.JOB_STATE_QUEUED, "rate limit")
    await set_limits(ch, "held")  # cleared
    assert await reason(third) == (job_pb2.JOB_STATE_QUEUED, "")
    wk.call.cancel()


async def test_queues_show_limits_and_running_per_key(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    (rep,) = await replicas(1)
    ch = rep[2]
    queues = qsg.QueueServiceStub(ch)
    shown = await set_limits(ch, "shown", key_max_running=2, rate=10)
    assert shown.limits.key_max_running == 2
    assert shown.limits.burst == 10  # default: one second of the rate
    await enqueue(ch, "shown", ["a", "a", "b"])
    wk = await RawWorker(ch).open(queues=("shown",))
    await wk.next_jobs(3)
    got = (
        await queues.GetQueue(qs.GetQueueRequest(name="shown", include_running_by_key=True))
    ).queue
    assert [(k.key, k.running) for k in got.running_by_key] == [("a", 2), ("b", 1)]
    listed = await queues.ListQueues(qs.ListQueuesRequest())
    (q,) = [q for q in listed.queues if q.name == "shown"]
    assert q.limits.rate == 10 and not q.running_by_key  # counts only on request
    wk.call.cancel()


async def test_bad_limits_are_invalid_argument_with_field_violations(
    replicas: Callable[..., Awaitable[list[Replica]]],
) -> None:
    (rep,) = await replicas(1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await set_limits(rep[2], "bad", max_running=-1, burst=3, key_rate=float("inf"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status.FromString(
        dict(err.value.trailing_metadata() or ())["grpc-status-details-bin"]
    )
    bad = error_details_pb2.BadRequest()
    for d in status.details:
        if d.Is(bad.DESCRIPTOR):
            d.Unpack(bad)
    fields = {v.field for v in bad.field_violations}
    assert fields == {"limits.max_running", "limits.burst", "limits.key_rate"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await enqueue(rep[2], "bad", ["no spaces allowed"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_without_limits_nothing_is_counted(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    """Flow control off: keyed jobs of a queue without limits go through the plain claim and
    the hand-off; no counter row, no counted lease."""
    (rep,) = await replicas(1)
    async with fleet([rep], "free", per_replica=1) as f:
        await f.enqueue(rep[2], "free", ["k"] * 5 + [None] * 5)
        await all_done(f, 10)
    assert await db.fetchval("SELECT count(*) FROM jobqueue.running_counts") == 0
    assert (
        await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE limit_token IS NOT NULL") == 0
    )
    assert f.most["k"] > 1  # nothing capped it


async def test_leased_jobs_carry_their_concurrency_key(
    replicas: Callable[..., Awaitable[list[Replica]]],
) -> None:
    """Every lease path gives the worker the job's key: the plain claim, the flow-controlled
    claim, and the hand-off of a job enqueued while a stream waits."""
    (rep,) = await replicas(1)
    ch = rep[2]
    await set_limits(ch, "keyed", key_max_running=5)
    waiting = await enqueue(ch, "plain", ["p", None]) + await enqueue(ch, "keyed", ["l", None])
    wk = await RawWorker(ch).open(queues=("plain", "keyed"))
    got = {j.job.id: j.job.concurrency_key for j in await wk.next_jobs(4)}
    late = await enqueue(ch, "plain", ["h"])  # to the idle stream
    got.update((j.job.id, j.job.concurrency_key) for j in await wk.next_jobs(1))
    assert got == dict(zip(waiting + late, ["p", "", "l", "", "h"], strict=True))
    wk.call.cancel()


async def test_watched_limited_jobs_settle_and_come_off_the_counters(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    """With a watcher, the job-change triggers (migration 0050) fire on the flow-controlled
    claim and on the settle statements that also uncount the lease: WatchJob sees each step,
    and the counters still come back to 0."""
    (rep,) = await replicas(1)
    ch = rep[2]
    stub = jsg.JobServiceStub(ch)
    await set_limits(ch, "watched", key_max_running=1)
    ok_id, bad_id = await enqueue(ch, "watched", ["k", "j"])
    calls = {i: stub.WatchJob(js.WatchJobRequest(id=i)) for i in (ok_id, bad_id)}

    async def states() -> dict[str, int]:
        return {i: (await asyncio.wait_for(c.read(), 10)).job.state for i, c in calls.items()}

    assert set((await states()).values()) == {job_pb2.JOB_STATE_QUEUED}
    wk = await RawWorker(ch).open(queues=("watched",))
    leased = {j.job.id: j for j in await wk.next_jobs(2)}
    assert set((await states()).values()) == {job_pb2.JOB_STATE_RUNNING}
    assert await counters(db, "watched") == {"": 2, "k": 1, "j": 1}
    await wk.complete(leased[ok_id])
    await wk.fail(leased[bad_id], failure_class=w.FAILURE_CLASS_DO_NOT_RETRY)
    assert await states() == {ok_id: job_pb2.JOB_STATE_SUCCEEDED, bad_id: job_pb2.JOB_STATE_FAILED}
    await wait_for_value(lambda: counters(db, "watched"), lambda c: c == {}, what="counters at 0")
    wk.call.cancel()


async def test_a_requeued_dead_letter_keeps_its_concurrency_key(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    """Even when the failed job's row was pruned first: the dead letter holds the key."""
    (rep,) = await replicas(1)
    ch = rep[2]
    dead = dsg.DeadLetterServiceStub(ch)
    kept, pruned = await enqueue(ch, "dlq", ["tenant-1", "tenant-2"])
    wk = await RawWorker(ch).open(queues=("dlq",))
    await wk.fail(*await wk.next_jobs(2), failure_class=w.FAILURE_CLASS_DO_NOT_RETRY)

    async def dead_letters() -> int:
        return int(await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters"))

    await wait_for_value(dead_letters, lambda n: n == 2, what="two dead letters")
    wk.call.cancel()
    # what retention's prune_jobs does to a failed job's row
    await db.execute("DELETE FROM jobqueue.jobs WHERE id = $1::uuid", pruned)
    for job_id in (kept, pruned):
        job = (await dead.RequeueDeadLetter(ds.RequeueDeadLetterRequest(job_id=job_id))).job
        assert job.state == job_pb2.JOB_STATE_QUEUED
    got = await db.fetch("SELECT id::text, concurrency_key FROM jobqueue.jobs ORDER BY id")
    assert [tuple(r) for r in got] == [(kept, "tenant-1"), (pruned, "tenant-2")]
