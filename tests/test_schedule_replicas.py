"""Exactly once per tick across replicas.

Two in-process replicas, each with its own Store, run a schedule every second for ten seconds:
one job per tick, no tick skipped, and no tick fired twice (the fired counter, which both
replicas share in this process, equals the jobs). Then real `jobqueue-grpc serve` processes: one
is SIGKILLed while it holds a tick mid-transaction (a trigger makes its insert wait on an advisory
lock the test holds), and the other fires that tick, late but once, and every tick after it.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import grpc
import pytest

from jobqueue_grpc import metrics
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2 as ss
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2_grpc as ssg
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from tests import conftest
from tests.lease_helpers import duration
from tests.support import CLI, free_port, wait_for_value, wait_until
from tests.test_serve_cli import START_DEADLINE, clean_env

pytestmark = pytest.mark.slow


async def tick_times(db: asyncpg.Connection, sid: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT run_at, idempotency_key FROM jobqueue.jobs WHERE idempotency_key LIKE $1"
        " ORDER BY run_at",
        f"schedule:{sid}:%",
    )


def assert_one_job_per_tick(rows: list[asyncpg.Record], every: timedelta) -> None:
    times = [r["run_at"] for r in rows]
    assert len(set(times)) == len(times), "a tick made two jobs"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g == every for g in gaps), f"a tick was lost or doubled: {gaps}"


@pytest.fixture
async def two_replicas(db_url: str) -> AsyncIterator[list[JobQueueServer]]:
    started: list[tuple[JobQueueServer, Store]] = []
    for _ in range(2):
        store = await Store.connect(db_url, min_size=1, max_size=4)
        srv = JobQueueServer(conftest.test_settings(db_url), store)
        await srv.start()
        started.append((srv, store))
    yield [srv for srv, _ in started]
    for srv, store in started:
        await srv.stop()
        await store.close()


async def test_a_schedule_every_second_on_two_replicas_makes_one_job_per_tick(
    two_replicas: list[JobQueueServer], db: asyncpg.Connection
) -> None:
    a, _b = two_replicas
    fired_before = metrics.TICKS_FIRED.labels("every-second")._value.get()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ch:
        stub = ssg.ScheduleServiceStub(ch)
        s = ss.Schedule(
            id="every-second", every=duration(1), job=js.EnqueueRequest(kind="tick", queue="t")
        )
        await stub.CreateSchedule(ss.CreateScheduleRequest(schedule=s))
        rows = await wait_for_value(
            lambda: tick_times(db, s.id), lambda r: len(r) >= 10, within=30, interval=0.2
        )
        await stub.PauseSchedule(ss.PauseScheduleRequest(id=s.id))
    rows = await tick_times(db, s.id)  # a pass may have committed since
    assert len(rows) >= 10
    assert_one_job_per_tick(rows, timedelta(seconds=1))
    fired = metrics.TICKS_FIRED.labels(s.id)._value.get() - fired_before
    assert fired == len(rows), "both replicas fired a tick"
    assert metrics.TICKS_MISSED.labels(s.id)._value.get() == 0


HOLD_LOCK = 4242
HOLD_TRIGGER = f"""
CREATE FUNCTION jobqueue.test_hold_ticks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.idempotency_key LIKE 'schedule:%'
       AND current_setting('jobqueue_test.replica', true) = 'a' THEN
        PERFORM pg_advisory_xact_lock_shared({HOLD_LOCK});
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_hold_ticks BEFORE INSERT ON jobqueue.jobs
    FOR EACH ROW EXECUTE FUNCTION jobqueue.test_hold_ticks();
"""


class Replica:
    def __init__(self, url: str, name: str) -> None:
        self.url = f"{url}{'&' if '?' in url else '?'}jobqueue_test.replica={name}"
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**clean_env(), "JOBQUEUE_DATABASE_URL": self.url}
        self.proc = await asyncio.create_subprocess_exec(
            str(CLI), "serve", "--port", str(self.port), "--metrics-port", "0", "--http-port", "0",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        proc = self.proc

        async def listening() -> bool:
            if proc.returncode is not None:  # fail early: it will never serve
                out = await proc.stdout.read() if proc.stdout else b""
                pytest.fail(f"server exited ({proc.returncode}) first:\n{out.decode()}")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as ch:
                try:
                    await ssg.ScheduleServiceStub(ch).ListSchedules(
                        ss.ListSchedulesRequest(), timeout=2
                    )
                except grpc.aio.AioRpcError:
                    return False
                return True

        await wait_until(listening, within=START_DEADLINE, interval=0.1, what="serving")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 60)


async def test_a_replica_killed_mid_tick_loses_no_tick_and_doubles_none(
    db_url: str, db: asyncpg.Connection
) -> None:
    await db.execute(HOLD_TRIGGER)
    await db.execute("SELECT pg_advisory_lock($1)", HOLD_LOCK)  # replica a's ticks wait on it
    a, b = Replica(db_url, "a"), Replica(db_url, "b")
    try:
        await a.start()
        await b.start()
        s = ss.Schedule(
            id="kill",
            every=duration(1),
            job=js.EnqueueRequest(kind="tick", queue="k"),
            missed_tick_policy=ss.MISSED_TICK_POLICY_CATCH_UP,
            catch_up_max=100,
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as ch:
            await ssg.ScheduleServiceStub(ch).CreateSchedule(ss.CreateScheduleRequest(schedule=s))

        # a claims a tick sooner or later; its insert then waits, schedule row locked
        async def held() -> list[asyncpg.Record]:
            return await db.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )

        [waiter] = await wait_for_value(held, lambda r: len(r) == 1, within=30, interval=0.05)
        assert a.proc is not None
        a.proc.kill()
        await a.proc.wait()
        # PostgreSQL notices a dead client only when it next reads from it; a backend blocked
        # on a lock reads nothing until then. Ending it is what TCP keepalive would do later.
        await db.execute("SELECT pg_terminate_backend($1)", waiter["pid"])
        before = len(await tick_times(db, s.id))
        # b takes over: the held tick (late, caught up) and five more after it
        await wait_for_value(
            lambda: tick_times(db, s.id), lambda r: len(r) >= before + 5, within=30, interval=0.2
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as ch:
            await ssg.ScheduleServiceStub(ch).PauseSchedule(ss.PauseScheduleRequest(id=s.id))
        rows = await tick_times(db, s.id)
        first = await db.fetchval("SELECT created_at FROM jobqueue.schedules WHERE id = $1", s.id)
        assert rows[0]["run_at"] - first <= timedelta(seconds=1)  # from the very first tick on
        assert_one_job_per_tick(rows, timedelta(seconds=1))
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", HOLD_LOCK)
        for r in (a, b):
            if r.proc is not None and r.proc.returncode is None:
                await r.stop()
