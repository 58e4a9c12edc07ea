"""ScheduleService against a real server and PostgreSQL: the CRUD, pause and resume, bad cron and
timezone naming their field, TriggerSchedule, the missed-tick policies after the servers were down,
a daylight-saving transition through the store, and a tick's job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from jobqueue_grpc import metrics
from jobqueue_grpc.domain import schedules as sched
from jobqueue_grpc.domain.jobs import NewJob
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2 as ss
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2_grpc as ssg
from jobqueue_grpc.store import Store
from tests.conftest import ServerFactory
from tests.lease_helpers import duration, get_job
from tests.support import wait_for_value
from tests.test_job_service import fails

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def schedule(sid: str, **kw: Any) -> ss.Schedule:
    kw.setdefault("job", js.EnqueueRequest(queue="reports", kind="digest", payload={"n": 1}))
    if "cron" not in kw and "every" not in kw:
        kw["every"] = duration(3600)
    return ss.Schedule(id=sid, **kw)


async def tick_jobs(db: asyncpg.Connection, sid: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, run_at, idempotency_key, state FROM jobqueue.jobs"
        " WHERE idempotency_key LIKE $1 ORDER BY run_at",
        f"schedule:{sid}:%",
    )


async def test_create_get_list_update_pause_resume_delete(channel: grpc.aio.Channel) -> None:
    stub = ssg.ScheduleServiceStub(channel)
    made = (
        await stub.CreateSchedule(
            ss.CreateScheduleRequest(
                schedule=schedule("nightly", cron="0 3 * * *", timezone="Europe/Berlin")
            )
        )
    ).schedule
    assert (made.id, made.cron, made.timezone, made.paused) == (
        "nightly",
        "0 3 * * *",
        "Europe/Berlin",
        False,
    )
    assert made.missed_tick_policy == ss.MISSED_TICK_POLICY_SKIP
    nxt = made.next_run_at.ToDatetime(tzinfo=UTC)
    assert nxt.astimezone(sched.zone("Europe/Berlin")).hour == 3 and nxt > datetime.now(UTC)
    assert made.job.kind == "digest" and dict(made.job.payload) == {"n": 1}

    err = await fails(stub.CreateSchedule(ss.CreateScheduleRequest(schedule=schedule("nightly"))))
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "SCHEDULE_EXISTS")

    await stub.CreateSchedule(ss.CreateScheduleRequest(schedule=schedule("a-first")))
    page = await stub.ListSchedules(ss.ListSchedulesRequest(page_size=1))
    assert [s.id for s in page.schedules] == ["a-first"] and page.next_page_token
    page = await stub.ListSchedules(ss.ListSchedulesRequest(page_token=page.next_page_token))
    assert [s.id for s in page.schedules] == ["nightly"] and not page.next_page_token

    # a new template keeps the next tick; a new timing computes it afresh
    same = schedule("nightly", cron="0 3 * * *", timezone="Europe/Berlin",
                    job=js.EnqueueRequest(kind="digest2"))  # fmt: skip
    up = (await stub.UpdateSchedule(ss.UpdateScheduleRequest(schedule=same))).schedule
    assert up.job.kind == "digest2" and up.next_run_at == made.next_run_at
    retimed = schedule("nightly", every=duration(60), job=js.EnqueueRequest(kind="digest2"))
    up = (await stub.UpdateSchedule(ss.UpdateScheduleRequest(schedule=retimed))).schedule
    assert up.cron == "" and up.every.seconds == 60
    assert up.next_run_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC) < timedelta(seconds=61)

    paused = (await stub.PauseSchedule(ss.PauseScheduleRequest(id="nightly"))).schedule
    assert paused.paused
    resumed = (await stub.ResumeSchedule(ss.ResumeScheduleRequest(id="nightly"))).schedule
    assert not resumed.paused

    await stub.DeleteSchedule(ss.DeleteScheduleRequest(id="nightly"))
    err = await fails(stub.GetSchedule(ss.GetScheduleRequest(id="nightly")))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "SCHEDULE_NOT_FOUND")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "schedule.cron"),
        ({"cron": "not a cron"}, "schedule.cron"),
        ({"cron": "0 3 * * *", "timezone": "Europe/Atlantis"}, "schedule.timezone"),
        ({"every": duration(0.1)}, "schedule.every"),
        ({"cron": "0 3 * * *", "every": duration(60)}, "schedule.cron"),
        ({"missed_tick_policy": ss.MISSED_TICK_POLICY_CATCH_UP}, "schedule.catch_up_max"),
        ({"job": js.EnqueueRequest(kind="x", idempotency_key="k")}, "schedule.job.idempotency_key"),
        ({"job": js.EnqueueRequest(kind="Bad Kind")}, "schedule.job.kind"),
        ({"job": js.EnqueueRequest(kind="x", traceparent=TRACEPARENT)}, "schedule.job.traceparent"),
        ({"job": js.EnqueueRequest(kind="x", metadata={"bad key": "v"})}, "schedule.job.metadata"),
    ],
)
async def test_bad_schedules_are_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, fields: dict[str, Any], field: str
) -> None:
    stub = ssg.ScheduleServiceStub(channel)
    err = await fails(
        stub.CreateSchedule(ss.CreateScheduleRequest(schedule=schedule("s", **fields)))
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.violations, err.violations
    bad_id = await fails(stub.GetSchedule(ss.GetScheduleRequest(id="No Such/Id")))
    assert "id" in bad_id.violations


async def test_trigger_runs_one_job_now_and_keeps_the_ticks(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    stub = ssg.ScheduleServiceStub(channel)
    made = (await stub.CreateSchedule(ss.CreateScheduleRequest(schedule=schedule("t")))).schedule
    out = await stub.TriggerSchedule(ss.TriggerScheduleRequest(id="t"))
    assert out.created and out.job.kind == "digest" and out.job.queue == "reports"
    assert out.job.state == job_pb2.JOB_STATE_QUEUED
    assert out.job.idempotency_key.startswith("schedule:t:trigger:")
    after = (await stub.GetSchedule(ss.GetScheduleRequest(id="t"))).schedule
    assert after.last_job_id == out.job.id and after.next_run_at == made.next_run_at
    err = await fails(stub.TriggerSchedule(ss.TriggerScheduleRequest(id="nope")))
    assert err.code == grpc.StatusCode.NOT_FOUND


async def test_the_template_metadata_and_concurrency_key_go_to_its_jobs(
    channel: grpc.aio.Channel,
) -> None:
    stub = ssg.ScheduleServiceStub(channel)
    job = js.EnqueueRequest(
        kind="digest", metadata={"tenant": "acme", "source": "cron"}, concurrency_key="acme"
    )
    made = (
        await stub.CreateSchedule(ss.CreateScheduleRequest(schedule=schedule("m", job=job)))
    ).schedule
    assert dict(made.job.metadata) == {"tenant": "acme", "source": "cron"}
    got = (await stub.GetSchedule(ss.GetScheduleRequest(id="m"))).schedule
    assert dict(got.job.metadata) == {"tenant": "acme", "source": "cron"}
    assert made.job.concurrency_key == got.job.concurrency_key == "acme"
    out = await stub.TriggerSchedule(ss.TriggerScheduleRequest(id="m"))
    assert dict(out.job.metadata) == {"tenant": "acme", "source": "cron"}
    assert out.job.concurrency_key == "acme"
    assert out.job.traceparent == ""


async def test_a_tick_enqueues_its_job_on_time(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    stub = ssg.ScheduleServiceStub(channel)
    await stub.CreateSchedule(
        ss.CreateScheduleRequest(schedule=schedule("soon", every=duration(1)))
    )
    rows = await wait_for_value(lambda: tick_jobs(db, "soon"), lambda r: len(r) >= 1, within=10)
    job = await get_job(channel, str(rows[0]["id"]))
    tick = rows[0]["run_at"]
    assert job.idempotency_key == sched.tick_key("soon", tick)
    assert (job.queue, job.kind, dict(job.payload)) == ("reports", "digest", {"n": 1})
    got = (await stub.GetSchedule(ss.GetScheduleRequest(id="soon"))).schedule
    assert got.last_run_at.ToDatetime(tzinfo=UTC) >= tick


@pytest.mark.parametrize(
    ("policy", "catch_up_max", "jobs", "missed"),
    [
        (ss.MISSED_TICK_POLICY_SKIP, 0, 0, 4),
        (ss.MISSED_TICK_POLICY_RUN_ONCE, 0, 1, 3),
        (ss.MISSED_TICK_POLICY_CATCH_UP, 2, 2, 2),
    ],
)
async def test_missed_tick_policies_after_the_servers_were_down(
    make_server: ServerFactory,
    db: asyncpg.Connection,
    policy: ss.MissedTickPolicy.ValueType,
    catch_up_max: int,
    jobs: int,
    missed: int,
) -> None:
    srv = await make_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        s = schedule(f"p{policy}", missed_tick_policy=policy, catch_up_max=catch_up_max)
        await ssg.ScheduleServiceStub(ch).CreateSchedule(ss.CreateScheduleRequest(schedule=s))
    await srv.stop()
    # down for three and a half hours: four hourly ticks fell, the latest half an hour ago
    await db.execute(
        "UPDATE jobqueue.schedules SET next_run_at = now() - interval '210 minutes' WHERE id = $1",
        s.id,
    )
    missed_before = metrics.TICKS_MISSED.labels(s.id)._value.get()
    srv = await make_server()
    after = await wait_for_value(
        lambda: db.fetchval(
            "SELECT next_run_at - now() FROM jobqueue.schedules WHERE id = $1", s.id
        ),
        lambda left: left > timedelta(minutes=1),
        what="the schedule advanced",
    )
    assert after < timedelta(minutes=31)  # the next tick after now, not an hour after it
    rows = await tick_jobs(db, s.id)
    assert len(rows) == jobs
    ages = [round((datetime.now(UTC) - r["run_at"]) / timedelta(minutes=30)) for r in rows]
    assert ages == [3, 1][-jobs:] if jobs else ages == []  # -1.5 h and -0.5 h
    assert metrics.TICKS_MISSED.labels(s.id)._value.get() - missed_before == missed


async def test_a_daylight_saving_year_through_the_store(
    store: Store, db: asyncpg.Connection
) -> None:
    """02:30 in Berlin on the last week of March and October, caught up from before the 2026
    changes: the tick in the spring gap fires once at 03:00 CEST, the one in the repeated fall
    hour once at its first 02:30."""
    timing = sched.Timing("30 2 25-31 3,10 *", None, "Europe/Berlin")
    job = NewJob("dst", "tick", "{}", 0, 1, None, None, 30.0, None, None)
    await store.schedules.create(
        "dst", timing, job, paused=False, missed=sched.Missed.CATCH_UP, catch_up_max=1000
    )
    await db.execute(
        "UPDATE jobqueue.schedules SET next_run_at = '2026-03-25T00:00:00Z' WHERE id = 'dst'"
    )
    [fired] = await store.schedules.fire_due(100, grace=60)
    assert fired.missed == 0 and fired.fired == len(fired.created)
    keys = {r["idempotency_key"] for r in await tick_jobs(db, "dst")}
    assert "schedule:dst:2026-03-29T01:00:00Z" in keys  # 03:00 CEST, right after the gap
    assert "schedule:dst:2026-03-28T01:30:00Z" in keys  # 02:30 CET the day before
    assert "schedule:dst:2026-10-25T00:30:00Z" in keys  # the first 02:30 (CEST)
    assert "schedule:dst:2026-10-25T01:30:00Z" not in keys  # not the second (CET)
    assert "schedule:dst:2026-10-26T01:30:00Z" in keys  # 02:30 CET the day after
    # run again: nothing is due, nothing doubles
    assert await store.schedules.fire_due(100, grace=60) == []
    assert len(await tick_jobs(db, "dst")) == len(keys)
