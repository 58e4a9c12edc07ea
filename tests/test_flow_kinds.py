"""Flow control per kind (issue 14 item 1, "optionally per-kind") on three replicas with several
Lease streams each, in tests/test_flow_control.py's way: a kind's running cap per key, its
running cap, its rate, and a queue's own limits and its kinds' limits applying together; limits
per kind in GetQueue, SetQueueLimits' validation, GetJob's held reason, and the counters.

Jobs are labelled "<kind>|<key>" (key '' without one): the workers count what they hold by
label, and a sampler reads the running jobs by label from the jobs table, over and over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qs
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qsg
from tests.lease_helpers import RawWorker
from tests.support import wait_for_value
from tests.test_flow_control import Fleet, Replica, all_done, counters, fleet, replicas

__all__ = ["replicas"]  # the fixture


async def set_kind_limits(ch: grpc.aio.Channel, queue: str, kind: str, **limits: Any) -> qs.Queue:
    resp = await qsg.QueueServiceStub(ch).SetQueueLimits(
        qs.SetQueueLimitsRequest(name=queue, kind=kind, limits=qs.QueueLimits(**limits))
    )
    return resp.queue


async def enqueue_kinds(
    f: Fleet | None, ch: grpc.aio.Channel, queue: str, jobs: list[tuple[str, str | None]]
) -> list[str]:
    """Enqueues (kind, key) jobs; with a fleet, records each job's label for its workers."""
    reqs = [js.EnqueueRequest(queue=queue, kind=kind, concurrency_key=k or "") for kind, k in jobs]
    resp = await jsg.JobServiceStub(ch).EnqueueBatch(js.EnqueueBatchRequest(jobs=reqs))
    ids = [r.job.id for r in resp.results]
    if f is not None:
        f.ids_keys.update(zip(ids, (f"{kind}|{k or ''}" for kind, k in jobs), strict=True))
        f.enqueued.set()
    return ids


@contextlib.asynccontextmanager
async def sampler(db_url: str, queue: str) -> AsyncIterator[dict[str, Any]]:
    """The most running jobs of `queue` seen at once per label, per kind and in all."""
    seen: dict[str, Any] = {
        "label": Counter(),
        "kind": Counter(),
        "key": Counter(),
        "total": 0,
        "samples": 0,
    }
    stop = asyncio.Event()
    db = await asyncpg.connect(db_url)

    async def run() -> None:
        while not stop.is_set():
            rows = await db.fetch(
                "SELECT kind, coalesce(concurrency_key, '') AS k, count(*) AS n "
                "FROM jobqueue.jobs WHERE queue = $1 AND state = 'running' GROUP BY 1, 2",
                queue,
            )
            kinds: Counter[str] = Counter()
            keys: Counter[str] = Counter()
            for r in rows:
                keys[r["k"]] += r["n"]
                label = f"{r['kind']}|{r['k']}"
                seen["label"][label] = max(seen["label"][label], r["n"])
                kinds[r["kind"]] += r["n"]
            for kind, n in kinds.items():
                seen["kind"][kind] = max(seen["kind"][kind], n)
            for key, n in keys.items():
                seen["key"][key] = max(seen["key"][key], n)
            seen["total"] = max(seen["total"], sum(kinds.values()))
            seen["samples"] += 1

    task = asyncio.create_task(run())
    try:
        yield seen
    finally:
        stop.set()
        await task
        await db.close()


async def kind_counters(db: asyncpg.Connection, queue: str) -> dict[tuple[str, str], int]:
    rows = await db.fetch(
        "SELECT kind, key, running FROM jobqueue.kind_running_counts "
        "WHERE queue = $1 AND running <> 0",
        queue,
    )
    return {(r["kind"], r["key"]): r["running"] for r in rows}


def held(f: Fleet, prefix: str) -> int:
    return sum(n for label, n in f.holding.items() if label.startswith(prefix))


async def counters_at_zero(db: asyncpg.Connection, queue: str) -> None:
    await wait_for_value(lambda: counters(db, queue), lambda c: c == {}, what="counters at 0")
    await wait_for_value(
        lambda: kind_counters(db, queue), lambda c: c == {}, what="kind counters at 0"
    )


async def test_a_kinds_key_cap_leaves_the_other_kinds_of_the_queue_alone(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection, db_url: str
) -> None:
    reps = await replicas(3)
    ch = reps[0][2]
    await set_kind_limits(ch, "mixed", "export", key_max_running=1)
    keys = [f"t{i}" for i in range(4)]
    jobs = [("export", k) for k in keys * 5] + [("work", k) for k in keys * 3]
    async with sampler(db_url, "mixed") as seen, fleet(reps, "mixed") as f:
        f.hold = asyncio.Event()  # workers keep what they get until set
        await enqueue_kinds(f, ch, "mixed", jobs)

        async def probe() -> tuple[int, int]:
            return held(f, "export|"), held(f, "work|")

        # 48 slots: every work job goes out at once, and exactly one export job per key
        await wait_for_value(probe, lambda h: h == (4, 12), what="4 exports and 12 works held")
        f.hold.set()
        await all_done(f, len(jobs))
    assert seen["samples"] > 0
    assert max(f.most[f"export|{k}"] for k in keys) == 1  # what the workers held at once
    assert max(seen["label"][f"export|{k}"] for k in keys) <= 1  # what PostgreSQL held
    assert min(f.most[f"work|{k}"] for k in keys) == 3  # the other kind: not capped per key
    await counters_at_zero(db, "mixed")


async def test_a_kinds_running_cap_across_replicas(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection, db_url: str
) -> None:
    reps = await replicas(3)
    ch = reps[1][2]
    await set_kind_limits(ch, "kcap", "export", max_running=2)
    jobs = [("export", None)] * 20 + [("export", "a")] * 10 + [("work", None)] * 10
    async with sampler(db_url, "kcap") as seen, fleet(reps, "kcap") as f:
        f.hold = asyncio.Event()
        await enqueue_kinds(f, ch, "kcap", jobs)

        async def probe() -> tuple[int, int]:
            return held(f, "export|"), held(f, "work|")

        await wait_for_value(probe, lambda h: h == (2, 10), what="2 exports and 10 works held")
        f.hold.set()
        await all_done(f, len(jobs))
    assert seen["kind"]["export"] <= 2
    assert seen["kind"]["work"] == 10  # never capped
    await counters_at_zero(db, "kcap")


async def test_the_queues_limits_and_its_kinds_limits_both_apply(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection, db_url: str
) -> None:
    reps = await replicas(3)
    ch = reps[2][2]
    q = (
        await qsg.QueueServiceStub(ch).SetQueueLimits(
            qs.SetQueueLimitsRequest(
                name="both", limits=qs.QueueLimits(max_running=4, key_max_running=2)
            )
        )
    ).queue
    assert q.limits.max_running == 4
    await set_kind_limits(ch, "both", "export", max_running=1)
    jobs = [("export", "a")] * 15 + [("work", "a")] * 15 + [("work", None)] * 15
    async with sampler(db_url, "both") as seen, fleet(reps, "both") as f:
        await enqueue_kinds(f, ch, "both", jobs)
        await all_done(f, len(jobs))
    assert seen["total"] <= 4 and f.total_most <= 4  # the queue's cap, every kind together
    assert seen["kind"]["export"] <= 1  # the kind's own cap
    assert seen["key"]["a"] <= 2  # the queue's cap per key counts key a's jobs of every kind
    assert await db.fetchval(
        "SELECT count(*) FROM jobqueue.jobs WHERE queue = 'both' AND state = 'succeeded'"
    ) == len(jobs)
    await counters_at_zero(db, "both")


async def test_a_kinds_starts_stay_within_its_rate(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    """The queue's tolerance (tests/test_flow_control.py): over any window of T seconds at most
    burst + rate * T jobs of the kind start, plus one for the rounding of a window's edges."""
    reps = await replicas(3)
    ch = reps[0][2]
    rate, burst = 25.0, 4.0
    await set_kind_limits(ch, "kpaced", "paced", rate=rate, burst=burst)
    jobs = [("paced", None)] * 20 + [("paced", "a")] * 10 + [("free", None)] * 20
    async with fleet(reps, "kpaced") as f:
        await enqueue_kinds(f, ch, "kpaced", jobs)
        await all_done(f, len(jobs))
    starts = [
        r[0]
        for r in await db.fetch(
            "SELECT date_part('epoch', started_at) FROM jobqueue.jobs "
            "WHERE queue = 'kpaced' AND kind = 'paced' ORDER BY started_at"
        )
    ]
    assert len(starts) == 30
    for i, t0 in enumerate(starts):
        for j in range(i, len(starts)):
            window = starts[j] - t0
            assert j - i + 1 <= burst + rate * window + 1, (i, j, window)
    await counters_at_zero(db, "kpaced")


async def test_get_queue_shows_kind_limits_and_clearing_them_ends_flow_control(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    (rep,) = await replicas(1)
    ch = rep[2]
    queues = qsg.QueueServiceStub(ch)
    shown = await set_kind_limits(ch, "kshown", "export", key_max_running=2, rate=10)
    assert not shown.HasField("limits")  # the queue has no limits of its own
    ((kind, lim),) = [(k.kind, k.limits) for k in shown.kind_limits]
    assert (kind, lim.key_max_running, lim.rate, lim.burst) == ("export", 2, 10, 10)
    await set_kind_limits(ch, "kshown", "a.b-c", max_running=3)
    await enqueue_kinds(None, ch, "kshown", [("export", "k"), ("export", "k"), ("other", "k")])
    wk = await RawWorker(ch).open(queues=("kshown",))
    await wk.next_jobs(3)
    got = (
        await queues.GetQueue(qs.GetQueueRequest(name="kshown", include_running_by_key=True))
    ).queue
    assert [(k.kind, k.limits.max_running) for k in got.kind_limits] == [
        ("a.b-c", 3),
        ("export", 0),
    ]
    assert [(k.key, k.running) for k in got.running_by_key] == [("k", 3)]
    listed = await queues.ListQueues(qs.ListQueuesRequest())
    (q,) = [q for q in listed.queues if q.name == "kshown"]
    assert [k.kind for k in q.kind_limits] == ["a.b-c", "export"] and not q.running_by_key
    assert await kind_counters(db, "kshown") == {
        ("export", ""): 2,
        ("export", "k"): 2,
        ("other", ""): 1,
        ("other", "k"): 1,
    }

    # the queue's own limits come and go; its kinds keep theirs
    both = (
        await queues.SetQueueLimits(
            qs.SetQueueLimitsRequest(name="kshown", limits=qs.QueueLimits(max_running=9))
        )
    ).queue
    assert both.limits.max_running == 9 and len(both.kind_limits) == 2
    mine = (await queues.SetQueueLimits(qs.SetQueueLimitsRequest(name="kshown"))).queue
    assert not mine.HasField("limits") and len(mine.kind_limits) == 2
    await set_kind_limits(ch, "kshown", "a.b-c")  # cleared
    left = await set_kind_limits(ch, "kshown", "export")
    assert not left.HasField("limits") and not left.kind_limits
    # nothing left: the queue is claimed by the plain claim again, no counter kept
    assert (
        await db.fetchval("SELECT count(*) FROM jobqueue.queue_limits WHERE queue = 'kshown'") == 0
    )
    assert await kind_counters(db, "kshown") == {}
    assert await counters(db, "kshown") == {}
    wk.call.cancel()


async def test_get_job_says_a_kind_limit_holds_a_job(
    replicas: Callable[..., Awaitable[list[Replica]]],
) -> None:
    (rep,) = await replicas(1)
    ch = rep[2]
    stub = jsg.JobServiceStub(ch)

    async def reason(job_id: str) -> tuple[int, str]:
        j = (await stub.GetJob(js.GetJobRequest(id=job_id))).job
        return j.state, j.held_reason

    await set_kind_limits(ch, "kheld", "export", key_max_running=1)
    ids = await enqueue_kinds(None, ch, "kheld", [("export", "k"), ("export", "k")])
    wk = await RawWorker(ch).open(queues=("kheld",), max_in_flight=4)
    running = await wk.next_job()
    waiting = next(i for i in ids if i != running.job.id)
    assert await reason(waiting) == (job_pb2.JOB_STATE_QUEUED, "concurrency_key limit")
    (other,) = await enqueue_kinds(None, ch, "kheld", [("work", "k")])  # another kind: not held
    assert (await wk.next_job()).job.id == other

    await set_kind_limits(ch, "kheld", "export", max_running=1)
    assert await reason(waiting) == (job_pb2.JOB_STATE_QUEUED, "queue limit")
    wk.call.cancel()


async def test_a_bad_kind_is_invalid_argument(
    replicas: Callable[..., Awaitable[list[Replica]]],
) -> None:
    (rep,) = await replicas(1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await set_kind_limits(rep[2], "bad", "No Spaces", max_running=1, burst=2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status.FromString(
        dict(err.value.trailing_metadata() or ())["grpc-status-details-bin"]
    )
    bad = error_details_pb2.BadRequest()
    for d in status.details:
        if d.Is(bad.DESCRIPTOR):
            d.Unpack(bad)
    assert {v.field for v in bad.field_violations} == {"kind", "limits.burst"}


async def test_a_dead_worker_releases_its_kind_limited_jobs(
    replicas: Callable[..., Awaitable[list[Replica]]], db: asyncpg.Connection
) -> None:
    """Stream closed and lease expired: the kind's counters come back down as the queue's do,
    and its jobs run elsewhere."""
    reps = await replicas(3, reaper_interval=0.2)
    a, b, c = (r[2] for r in reps)
    await set_kind_limits(a, "kfragile", "export", key_max_running=1)
    stub = jsg.JobServiceStub(a)
    quick = job_pb2.RetryPolicy(
        backoff_base={"nanos": 50_000_000}, backoff_cap={"nanos": 100_000_000}
    )
    ids = [
        (
            await stub.Enqueue(
                js.EnqueueRequest(
                    queue="kfragile",
                    kind="export",
                    concurrency_key="solo",
                    lease_duration={"seconds": 1},
                    retry_policy=quick,
                    priority=p,
                )
            )
        ).job.id
        for p in (0, 1)
    ]
    dying = await RawWorker(a).open(queues=("kfragile",))
    assert (await dying.next_job()).job.id == ids[0]
    assert await kind_counters(db, "kfragile") == {("export", ""): 1, ("export", "solo"): 1}
    dying.call.cancel()  # the stream's end releases the lease and the counters

    hung = await RawWorker(b).open(queues=("kfragile",), max_in_flight=1)
    assert (await hung.next_job()).job.id in ids  # the kind's key was not left full
    assert await kind_counters(db, "kfragile") == {("export", ""): 1, ("export", "solo"): 1}
    healthy = await RawWorker(c).open(queues=("kfragile",))  # `hung` never answers
    done: set[str] = set()

    async def finish() -> set[str]:
        with contextlib.suppress(TimeoutError):
            lj = await healthy.next_job(within=0.2)
            await healthy.complete(lj)
            done.add(lj.job.id)
        return done

    await wait_for_value(finish, lambda d: set(ids) <= d, within=30, what="both jobs done")
    await counters_at_zero(db, "kfragile")
    for wk in (hung, healthy):
        wk.call.cancel()
