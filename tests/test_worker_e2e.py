"""End to end with real processes: `jobqueue-grpc worker tests.workers_app:worker` subprocesses
against a real server (in this process, or `jobqueue-grpc serve` as a subprocess) and PostgreSQL.

Workers record every execution in a shared file (tests/workers_app.py); the tests read it to
count executions per job. Every wait is a condition polled with a deadline.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from jobqueue_grpc import AsyncClient
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.server import JobQueueServer
from tests.conftest import ServerFactory
from tests.lease_helpers import enqueue_many, job_in_state
from tests.support import Processes, exit_code, free_port, wait_for_value, wait_until

S = job_pb2

pytestmark = pytest.mark.slow


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    ps = Processes(tmp_path)
    yield ps
    ps.cleanup()


@pytest.fixture
async def fast(make_server: ServerFactory) -> JobQueueServer:
    return await make_server(reaper_interval=0.2, backoff_base=0.1, backoff_cap=0.5)


@pytest.fixture
async def client(fast: JobQueueServer) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(f"127.0.0.1:{fast.port}")
    yield c
    await c.close()


def address(srv: JobQueueServer) -> str:
    return f"127.0.0.1:{srv.port}"


async def streams(srv: JobQueueServer, n: int) -> None:
    """Waits until `n` worker streams are open on the in-process server."""

    async def count() -> int:
        return len(srv.engine.registry)

    await wait_for_value(
        count, lambda c: c == n, within=30, interval=0.05, what=f"{n} worker streams"
    )


async def logged(procs: Processes, job_id: str, event: str, n: int = 1) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        return procs.of(job_id, event)

    return await wait_for_value(
        read, lambda es: len(es) >= n, within=30, interval=0.05, what=f"{n} {event!r} of {job_id}"
    )


# -- worker death ---------------------------------------------------------------------------------
async def test_a_job_of_a_killed_worker_runs_again_and_succeeds_once(
    fast: JobQueueServer, client: AsyncClient, procs: Processes
) -> None:
    first = procs.worker(address(fast), concurrency=1)
    job = (await client.enqueue("sleep", {"seconds": 60, "first_only": True}, lease_duration=2)).job
    (started,) = await logged(procs, job.id, "start")
    assert (started["pid"], started["attempt"]) == (first.pid, 1)
    first.send_signal(signal.SIGKILL)
    assert await exit_code(first) == -signal.SIGKILL
    second = procs.worker(address(fast), concurrency=1)
    done = await job_in_state(client.channel, job.id, S.JOB_STATE_SUCCEEDED, within=30)
    assert done.attempt == 2
    assert done.errors[0].source in ("stream_closed", "lease_expired")
    assert dict(done.result) == {"pid": second.pid, "attempt": 2}
    assert [(e["pid"], e["attempt"]) for e in procs.of(job.id, "start")] == [
        (first.pid, 1),
        (second.pid, 2),
    ]
    assert [(e["pid"], e["attempt"]) for e in procs.of(job.id, "end")] == [(second.pid, 2)]


async def test_a_frozen_workers_lease_expires_and_the_job_moves_on(
    fast: JobQueueServer, client: AsyncClient, procs: Processes
) -> None:
    # SIGSTOP keeps the connection up but stops extensions: only the lease expiry frees the job.
    frozen = procs.worker(address(fast), concurrency=1)
    job = (await client.enqueue("sleep", {"seconds": 60, "first_only": True}, lease_duration=2)).job
    await logged(procs, job.id, "start")
    frozen.send_signal(signal.SIGSTOP)
    try:
        other = procs.worker(address(fast), concurrency=1)
        done = await job_in_state(client.channel, job.id, S.JOB_STATE_SUCCEEDED, within=30)
    finally:
        frozen.send_signal(signal.SIGKILL)
    assert done.attempt == 2
    assert [e.source for e in done.errors] == ["lease_expired"]
    assert dict(done.result) == {"pid": other.pid, "attempt": 2}
    assert [e["pid"] for e in procs.of(job.id, "end")] == [other.pid]


async def test_a_handler_longer_than_its_lease_keeps_it_by_extension(
    fast: JobQueueServer, client: AsyncClient, procs: Processes
) -> None:
    lease = 2.0
    procs.worker(address(fast), concurrency=2)
    procs.worker(address(fast), concurrency=2)  # a second taker, were the job released
    job = (await client.enqueue("sleep", {"seconds": 3 * lease}, lease_duration=lease)).job
    (started,) = await logged(procs, job.id, "start")
    first = await client.get_job(job.id)
    first_expiry = first.lease_expires_at.ToDatetime()
    await wait_for_value(
        lambda: client.get_job(job.id),
        lambda j: j.lease_expires_at.ToDatetime() > first_expiry,
        within=10,
        what="the lease extended",
    )
    done = await job_in_state(client.channel, job.id, S.JOB_STATE_SUCCEEDED, within=30)
    assert done.attempt == 1 and not done.errors
    (ended,) = procs.of(job.id, "end")
    assert len(procs.of(job.id, "start")) == 1, "delivered a second time"
    assert ended["pid"] == started["pid"]
    assert ended["t"] - started["t"] >= 3 * lease


# -- cancellation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["wait_cancel", "wait_cancel_sync"])
async def test_cancel_of_a_running_job_reaches_the_handler(
    fast: JobQueueServer, client: AsyncClient, procs: Processes, kind: str
) -> None:
    procs.worker(address(fast), concurrency=2)
    job = (await client.enqueue(kind, {})).job
    await logged(procs, job.id, "start")
    resp = await client.cancel_job(job.id)
    assert resp.outcome == js.CANCEL_OUTCOME_CANCEL_REQUESTED
    (seen,) = await logged(procs, job.id, "cancelled")
    assert seen["requested"] is True
    done = await job_in_state(client.channel, job.id, S.JOB_STATE_CANCELLED)
    assert done.attempt == 1 and done.cancel_requested
    assert len(procs.of(job.id, "start")) == 1


# -- throughput and exactly-once in practice -------------------------------------------------------
async def test_sixteen_workers_drain_ten_thousand_jobs_once_each(
    make_server: ServerFactory, procs: Processes, db: asyncpg.Connection
) -> None:
    n_workers, n_jobs = 16, 10_000
    srv = await make_server()
    workers = [procs.worker(address(srv), concurrency=32) for _ in range(n_workers)]
    await streams(srv, n_workers)
    async with grpc.aio.insecure_channel(address(srv)) as ch:
        jobs = await enqueue_many(ch, n_jobs)

    async def succeeded() -> int:
        return int(
            await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE state = 'succeeded'")
        )

    await wait_for_value(
        succeeded, lambda c: c == n_jobs, within=60, interval=0.2, what="every job SUCCEEDED"
    )
    stats = await db.fetchrow(
        "SELECT count(*) AS n, max(attempt) AS max_attempt,"
        " count(*) FILTER (WHERE errors <> '[]') AS with_errors FROM jobqueue.jobs"
    )
    assert dict(stats) == {"n": n_jobs, "max_attempt": 1, "with_errors": 0}

    runs = [e for e in procs.executions() if e["event"] == "run"]
    per_job = Counter(e["job"] for e in runs)
    assert set(per_job) == {j.id for j in jobs}
    assert [j for j, c in per_job.items() if c != 1] == [], "jobs executed more than once"
    by_job: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in runs:
        by_job[e["job"]].append((e["start"], e["end"]))
    for spans in by_job.values():  # with at-least-once, re-runs may happen; overlaps may not
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert {e["pid"] for e in runs} == {p.pid for p in workers}, "a worker got no job"
    results = await db.fetch("SELECT id, result FROM jobqueue.jobs")
    ran_in = {e["job"]: e["pid"] for e in runs}
    assert all(json.loads(r["result"])["pid"] == ran_in[str(r["id"])] for r in results)


# -- graceful shutdown ----------------------------------------------------------------------------
async def test_worker_sigterm_finishes_its_jobs_then_exits(
    fast: JobQueueServer, client: AsyncClient, procs: Processes
) -> None:
    w = procs.worker(address(fast), concurrency=4)
    jobs = [(await client.enqueue("sleep", {"seconds": 1.5})).job for _ in range(3)]
    for j in jobs:
        await logged(procs, j.id, "start")
    w.send_signal(signal.SIGTERM)
    assert await exit_code(w) == 0
    for j in jobs:
        done = await job_in_state(client.channel, j.id, S.JOB_STATE_SUCCEEDED)
        assert done.attempt == 1 and not done.errors
        assert len(procs.of(j.id, "end")) == 1


async def test_server_sigterm_with_jobs_in_flight_loses_none(
    db_url: str, db: asyncpg.Connection, procs: Processes
) -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    env = {"JOBQUEUE_BACKOFF_BASE": "0.1", "JOBQUEUE_BACKOFF_CAP": "0.5"}
    server = procs.server(db_url, port, grace=5, **env)
    async with grpc.aio.insecure_channel(addr) as ch:
        await wait_until(
            lambda: _ready(ch), within=30, interval=0.1, what="the server to accept calls"
        )
    workers = [procs.worker(addr, concurrency=5) for _ in range(2)]
    async with AsyncClient(addr) as c:
        long = (await c.enqueue("sleep", {"seconds": 60, "first_only": True})).job
        short = [(await c.enqueue("sleep", {"seconds": 1.0})).job for _ in range(30)]
    await logged(procs, long.id, "start")

    async def running() -> int:
        return int(await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE state = 'running'"))

    await wait_for_value(running, lambda n: n >= 6, within=30, interval=0.05, what="jobs in flight")
    server.send_signal(signal.SIGTERM)
    assert await exit_code(server, within=30) == 0, procs.output(server)

    # Nothing is left leased: what was in flight completed within the grace period or was released.
    states = dict(await db.fetch("SELECT state, count(*) FROM jobqueue.jobs GROUP BY state"))
    assert "running" not in states, states
    parked = await db.fetchrow(
        "SELECT state, errors FROM jobqueue.jobs WHERE id = $1", _id(long.id)
    )
    assert parked["state"] in ("retrying", "queued")
    assert [e["source"] for e in json.loads(parked["errors"])] == ["server_shutdown"]
    for w in workers:
        await wait_for_value(
            _text(procs, w),
            lambda t: "draining" in t,
            within=10,
            interval=0.1,
            what="the worker to see draining",
        )

    # A new server on the same address: the workers reconnect and every job ends SUCCEEDED.
    again = procs.server(db_url, port, grace=5, **env)
    async with AsyncClient(addr) as c:
        await wait_until(lambda: _ready(c.channel), within=30, interval=0.1, what="the new server")
        for j in [long, *short]:
            done = await job_in_state(c.channel, j.id, S.JOB_STATE_SUCCEEDED, within=60)
            assert len(procs.of(j.id, "end")) == 1, j.id
            if j.id != long.id:
                assert done.attempt == 1, "a short job was cut off despite the grace period"
        assert (await c.get_job(long.id)).attempt == 2
    for w in workers:
        w.send_signal(signal.SIGTERM)
    again.send_signal(signal.SIGTERM)
    for p in [*workers, again]:
        assert await exit_code(p) == 0, procs.output(p)


async def _ready(ch: grpc.aio.Channel) -> bool:
    try:
        await jsg.JobServiceStub(ch).GetJob(js.GetJobRequest(id=str(uuid.uuid4())), timeout=1)
    except grpc.aio.AioRpcError as e:
        return e.code() == grpc.StatusCode.NOT_FOUND
    return True


def _id(job_id: str) -> uuid.UUID:
    return uuid.UUID(job_id)


def _text(procs: Processes, p: subprocess.Popen[bytes]) -> Any:
    async def read() -> str:
        return procs.output(p)

    return read
