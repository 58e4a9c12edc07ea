"""WorkerService.Lease at the protocol level, through a real server and PostgreSQL.

Each test drives Lease streams by hand (tests/lease_helpers.RawWorker), as a worker written in any
language would. Waits are conditions polled with a deadline; "nothing arrived" is shown by a
second stream receiving what the first must not.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qs
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qsg
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from tests.conftest import ServerFactory
from tests.lease_helpers import (
    RawWorker,
    cancel_job,
    duration,
    enqueue,
    enqueue_many,
    get_job,
    job_in_state,
)
from tests.support import field_violations, wait_for_value

S = job_pb2
BASE, CAP = 0.2, 1.0  # the fast server's backoff


@pytest.fixture
async def fast(make_server: ServerFactory) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a server with a fast reaper and short retry backoff."""
    srv = await make_server(reaper_interval=0.2, backoff_base=BASE, backoff_cap=CAP)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        yield ch


def ts(t: Any) -> datetime:
    out: datetime = t.ToDatetime(tzinfo=UTC)
    return out


def violations(err: grpc.aio.AioRpcError | None) -> dict[str, str]:
    assert err is not None
    return field_violations(err)


async def dead_letter(db: asyncpg.Connection, job_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT * FROM jobqueue.dead_letters WHERE job_id = $1", uuid.UUID(job_id)
    )
    return row


# -- open ---------------------------------------------------------------------------------------
async def test_job_is_pushed_and_completed(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    job = (await enqueue(channel, "send_email", payload={"to": "a@example.com"})).job
    leased = await worker.next_job()
    assert leased.job.id == job.id
    assert leased.job.attempt == 1
    assert dict(leased.job.payload) == {"to": "a@example.com"}
    assert leased.lease_token
    running = await get_job(channel, job.id)
    assert running.state == S.JOB_STATE_RUNNING
    assert running.worker_id == "raw"
    await worker.complete(leased)
    await worker.close()
    done = await get_job(channel, job.id)
    assert done.state == S.JOB_STATE_SUCCEEDED


async def test_first_message_must_be_open(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).start(w.LeaseRequest(heartbeat=w.Heartbeat()))
    assert await worker.ended == grpc.StatusCode.INVALID_ARGUMENT
    assert "open" in violations(worker.error)


async def test_a_second_open_is_a_protocol_violation(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    await worker.send(open=w.LeaseOpen(worker_id="again"))
    assert await worker.ended == grpc.StatusCode.INVALID_ARGUMENT


async def test_open_with_a_bad_queue_name_is_refused(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open(queues=("default", "Not A Queue!"))
    assert await worker.ended == grpc.StatusCode.INVALID_ARGUMENT
    assert "open.queues[1]" in violations(worker.error)


async def test_max_in_flight_over_the_servers_cap_is_refused(make_server: ServerFactory) -> None:
    srv = await make_server(max_in_flight=50)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        ok = await RawWorker(ch).open(max_in_flight=50)
        await ok.sync()
        worker = await RawWorker(ch).open(max_in_flight=51)
        assert await worker.ended == grpc.StatusCode.INVALID_ARGUMENT
        assert "open.max_in_flight" in violations(worker.error)
        await ok.close()


# -- jobs, outcomes -----------------------------------------------------------------------------
async def test_jobs_travel_in_batches(channel: grpc.aio.Channel) -> None:
    jobs = await enqueue_many(channel, 20)
    worker = await RawWorker(channel).open(max_in_flight=20)
    leased = await worker.next_jobs(20)
    assert {j.job.id for j in leased} == {j.id for j in jobs}
    assert max(worker.batches) > 1, f"every job came alone: {worker.batches}"
    await worker.complete(*leased)  # many outcomes in one frame
    for j in jobs:
        await job_in_state(channel, j.id, S.JOB_STATE_SUCCEEDED)
    await worker.close()


async def test_complete_records_the_result(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    job = (await enqueue(channel)).job
    leased = await worker.next_job()
    await worker.complete(leased, result={"sent": True, "n": 3})
    done = await job_in_state(channel, job.id, S.JOB_STATE_SUCCEEDED)
    assert dict(done.result) == {"sent": True, "n": 3}
    assert done.attempt == 1
    assert done.HasField("finished_at")
    assert not done.HasField("lease_expires_at")
    await worker.close()


async def test_progress_is_visible_in_get_job(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    job = (await enqueue(channel)).job
    leased = await worker.next_job()
    await worker.progress(leased, {"pct": 50, "stage": "upload"})
    running = await wait_for_value(
        lambda: get_job(channel, job.id), lambda j: j.HasField("progress"), what="progress"
    )
    assert dict(running.progress) == {"pct": 50, "stage": "upload"}
    assert running.state == S.JOB_STATE_RUNNING
    await worker.progress(leased, {"pct": 100})
    await wait_for_value(
        lambda: get_job(channel, job.id),
        lambda j: dict(j.progress) == {"pct": 100},
        what="progress replaced",
    )
    await worker.complete(leased)
    await job_in_state(channel, job.id, S.JOB_STATE_SUCCEEDED)
    await worker.close()


async def test_extend_answers_extended_with_a_later_expiry(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    job = (await enqueue(channel)).job
    leased = await worker.next_job()
    await worker.extend(leased, by=120)
    ext = (await worker.next_of("extended")).extended
    assert ext.job_id == job.id
    assert ts(ext.lease_expires_at) > ts(leased.lease_expires_at) + timedelta(seconds=60)
    assert (await get_job(channel, job.id)).lease_expires_at == ext.lease_expires_at
    await worker.complete(leased)
    await job_in_state(channel, job.id, S.JOB_STATE_SUCCEEDED)
    await worker.close()


async def test_outcomes_with_a_wrong_token_or_job_are_rejected(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    job = (await enqueue(channel)).job
    leased = await worker.next_job()
    forged = w.LeasedJob(job=leased.job, lease_token=str(uuid.uuid4()))
    for send in (worker.complete, worker.fail, worker.extend, worker.cancelled):
        await send(forged)
        rej = (await worker.next_of("rejected")).rejected
        assert (rej.job_id, rej.code) == (job.id, w.REJECT_REASON_STALE_LEASE), send
    stranger = w.LeasedJob(job=job_pb2.Job(id=str(uuid.uuid4())), lease_token=leased.lease_token)
    await worker.complete(stranger)
    rej = (await worker.next_of("rejected")).rejected
    assert (rej.job_id, rej.code) == (stranger.job.id, w.REJECT_REASON_UNKNOWN_JOB)
    # a huge made-up id is not echoed whole
    huge = w.LeasedJob(job=job_pb2.Job(id="x" * 1_000_000), lease_token=leased.lease_token)
    await worker.complete(huge)
    rej = (await worker.next_of("rejected")).rejected
    assert (rej.job_id, rej.code) == ("x" * 64, w.REJECT_REASON_UNKNOWN_JOB)
    running = await get_job(channel, job.id)
    assert running.state == S.JOB_STATE_RUNNING and not running.errors
    await worker.complete(leased)
    await job_in_state(channel, job.id, S.JOB_STATE_SUCCEEDED)
    await worker.close()


async def test_heartbeat_is_answered(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    await worker.send(heartbeat=w.Heartbeat())
    # The server's own heartbeats come every 15 s: one within 5 s is the answer.
    await worker.next_of("heartbeat", within=5)
    await worker.close()


async def test_drain_stops_new_jobs_but_accepts_outcomes(channel: grpc.aio.Channel) -> None:
    draining = await RawWorker(channel).open(max_in_flight=5, worker_id="draining")
    first = (await enqueue(channel)).job
    held = await draining.next_job()
    assert held.job.id == first.id
    await draining.drain()
    later = await enqueue_many(channel, 3)
    other = await RawWorker(channel).open(max_in_flight=5, worker_id="other")
    got = await other.next_jobs(3)
    assert {j.job.id for j in got} == {j.id for j in later}
    assert draining.jobs.empty() and draining.received == 1
    await draining.complete(held)  # outcomes are still accepted after drain
    await job_in_state(channel, first.id, S.JOB_STATE_SUCCEEDED)
    await other.complete(*got)
    await draining.close()
    await other.close()
    assert draining.received == 1


# -- failures, retries, dead letters --------------------------------------------------------------
async def test_retry_parks_the_job_with_the_error(
    fast: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    worker = await RawWorker(fast).open()
    job = (await enqueue(fast, max_attempts=3)).job
    leased = await worker.next_job()
    await worker.fail(leased, message="smtp down", details={"code": 421})
    again = await worker.next_job()
    assert again.job.id == job.id and again.job.attempt == 2
    assert again.lease_token != leased.lease_token
    (err,) = again.job.errors
    assert (err.attempt, err.message, err.source) == (1, "smtp down", "worker")
    assert dict(err.details) == {"code": 421}
    assert again.job.last_error == err
    assert ts(again.job.started_at) >= ts(err.failed_at) + timedelta(seconds=BASE)
    await worker.complete(again)
    done = await job_in_state(fast, job.id, S.JOB_STATE_SUCCEEDED)
    assert done.attempt == 2 and len(done.errors) == 1
    assert await dead_letter(db, job.id) is None
    await worker.close()


async def test_retries_back_off_with_jitter_then_dead_letter(
    fast: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    attempts = 4
    worker = await RawWorker(fast).open()
    job = (await enqueue(fast, max_attempts=attempts)).job
    prev_sleep: float | None = None
    leases: list[w.LeasedJob] = []
    for n in range(1, attempts + 1):
        leased = await worker.next_job()
        assert (leased.job.id, leased.job.attempt) == (job.id, n)
        if leases:  # not before failed_at + the recorded sleep (>= base); not long after cap
            failed_at = ts(leased.job.errors[-1].failed_at)
            started = ts(leased.job.started_at)
            assert started >= failed_at + timedelta(seconds=prev_sleep or 0)
            assert started >= failed_at + timedelta(seconds=BASE)
            assert started <= failed_at + timedelta(seconds=CAP + 2)
        leases.append(leased)
        await worker.fail(leased, message=f"boom {n}")
        if n < attempts:
            row = await wait_for_value(
                lambda: db.fetchrow(
                    "SELECT state, run_at, last_sleep, errors FROM jobqueue.jobs WHERE id = $1",
                    uuid.UUID(job.id),
                ),
                lambda r: r["state"] in ("retrying", "queued") and r["last_sleep"] is not None,
                what="the retry recorded",
            )
            sleep = row["last_sleep"]
            upper = min(CAP, max(BASE, (prev_sleep or BASE) * 3))
            assert BASE <= sleep <= upper + 1e-9, (n, sleep, prev_sleep)
            failed_at = datetime.fromisoformat(json.loads(row["errors"])[-1]["failed_at"])
            assert abs((row["run_at"] - failed_at).total_seconds() - sleep) < 1e-3
            prev_sleep = sleep
    failed = await job_in_state(fast, job.id, S.JOB_STATE_FAILED)
    assert [(e.attempt, e.message, e.source) for e in failed.errors] == [
        (n, f"boom {n}", "worker") for n in range(1, attempts + 1)
    ]
    assert failed.attempt == attempts and failed.HasField("finished_at")
    dl = await dead_letter(db, job.id)
    assert dl is not None, "a FAILED job is in the dead-letter store"
    assert dl["attempts"] == attempts
    assert [e["message"] for e in json.loads(dl["errors"])] == [
        f"boom {n}" for n in range(1, attempts + 1)
    ]
    # FAILED is terminal: never delivered again (a later job arrives, that one does not).
    sentinel = (await enqueue(fast)).job
    assert (await worker.next_job()).job.id == sentinel.id
    await worker.close()


async def test_do_not_retry_dead_letters_at_once(
    fast: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    worker = await RawWorker(fast).open()
    job = (await enqueue(fast, max_attempts=5, payload={"to": "nobody"})).job
    leased = await worker.next_job()
    await worker.fail(leased, message="bad address", failure_class=w.FAILURE_CLASS_DO_NOT_RETRY)
    failed = await job_in_state(fast, job.id, S.JOB_STATE_FAILED)
    assert failed.attempt == 1
    assert [(e.attempt, e.message) for e in failed.errors] == [(1, "bad address")]
    dl = await dead_letter(db, job.id)
    assert dl is not None
    assert dl["attempts"] == 1 and json.loads(dl["payload"]) == {"to": "nobody"}
    await worker.close()


async def test_retry_after_waits_the_given_delay(
    fast: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    worker = await RawWorker(fast).open()
    job = (await enqueue(fast, max_attempts=3)).job
    leased = await worker.next_job()
    await worker.fail(
        leased, message="rate limited", failure_class=w.FAILURE_CLASS_RETRY_AFTER, retry_after=1.5
    )
    parked = await job_in_state(fast, job.id, S.JOB_STATE_RETRYING)
    failed_at = ts(parked.errors[-1].failed_at)
    assert abs((ts(parked.run_at) - failed_at).total_seconds() - 1.5) < 1e-3
    again = await worker.next_job(within=10)
    assert again.job.attempt == 2
    assert ts(again.job.started_at) >= failed_at + timedelta(seconds=1.5)
    # Out of attempts, "retry after" dead-letters like any failure.
    await worker.fail(again, failure_class=w.FAILURE_CLASS_RETRY_AFTER, retry_after=0.1)
    third = await worker.next_job()
    await worker.fail(third, failure_class=w.FAILURE_CLASS_RETRY_AFTER, retry_after=0.1)
    await job_in_state(fast, job.id, S.JOB_STATE_FAILED)
    assert await dead_letter(db, job.id) is not None
    await worker.close()


async def test_the_leased_job_is_the_job_get_job_shows(fast: grpc.aio.Channel) -> None:
    # The lease path builds its Job from a leaner row than GetJob's (epoch times, fewer columns):
    # field for field, it must be the same message, previous attempt's error and progress too.
    worker = await RawWorker(fast).open(worker_id="w-same")
    job = (
        await enqueue(
            fast,
            kind="same",
            payload=_struct({"a": [1, "x"], "b": None}),
            priority=3,
            max_attempts=4,
            idempotency_key="same-as-get",
            lease_duration=duration(42.5),
            retry_policy=job_pb2.RetryPolicy(backoff_base=duration(0.1), backoff_cap=duration(0.3)),
        )
    ).job
    first = await worker.next_job()
    assert first.job == await get_job(fast, job.id)
    await worker.call.write(
        w.LeaseRequest(
            progress=w.LeaseProgress(
                job_id=first.job.id, lease_token=first.lease_token, progress=_struct({"p": 1})
            )
        )
    )
    await wait_for_value(lambda: get_job(fast, job.id), lambda j: bool(j.progress))
    await worker.fail(first, message="boom")
    second = await worker.next_job()
    assert second.job.attempt == 2 and len(second.job.errors) == 1
    assert second.job == await get_job(fast, job.id)
    assert second.lease_expires_at == second.job.lease_expires_at
    await worker.close()


def _struct(d: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    out = struct_pb2.Struct()
    out.update(d)
    return out


# -- leases: fencing, expiry, release ------------------------------------------------------------
async def test_a_late_outcome_from_an_expired_lease_is_rejected(
    fast: grpc.aio.Channel,
) -> None:
    job = (await enqueue(fast, lease_duration=duration(1), max_attempts=3)).job
    late = await RawWorker(fast).open(worker_id="late")
    first = await late.next_job()
    await late.drain()  # so the re-lease can only go to the second worker
    second = await RawWorker(fast).open(worker_id="second")
    relet = await second.next_job(within=15)
    assert (relet.job.id, relet.job.attempt) == (job.id, 2)
    assert relet.job.errors[-1].source == "lease_expired"

    await late.complete(first, result={"by": "late"})
    rej = (await late.next_of("rejected")).rejected
    assert (rej.job_id, rej.code) == (job.id, w.REJECT_REASON_STALE_LEASE)
    running = await get_job(fast, job.id)
    assert running.state == S.JOB_STATE_RUNNING and running.worker_id == "second"
    assert not running.HasField("result")

    await second.complete(relet, result={"by": "second"})
    done = await job_in_state(fast, job.id, S.JOB_STATE_SUCCEEDED)
    for send in (late.fail, late.cancelled, late.extend):
        await send(first)
        rej = (await late.next_of("rejected")).rejected
        assert (rej.job_id, rej.code) == (job.id, w.REJECT_REASON_STALE_LEASE), send
    after = await get_job(fast, job.id)
    assert after.state == S.JOB_STATE_SUCCEEDED and dict(after.result) == {"by": "second"}
    assert after.attempt == 2 and after.updated_at == done.updated_at
    await late.close()
    await second.close()


@pytest.mark.parametrize("how", ["done_writing", "cancel"])
async def test_closing_a_stream_releases_its_jobs_at_once(fast: grpc.aio.Channel, how: str) -> None:
    job = (await enqueue(fast, lease_duration=duration(30))).job
    first = await RawWorker(fast).open(worker_id="first")
    leased = await first.next_job()
    second = await RawWorker(fast).open(worker_id="second")
    await second.sync()
    if how == "cancel":
        first.cancel()
    else:
        await first.close()
    # Lease 30 s; backoff <= 1 s: a redelivery within 10 s can only come from the release.
    relet = await second.next_job(within=10)
    assert relet.job.id == job.id and relet.job.attempt == 2
    assert relet.job.errors[0].source == "stream_closed"
    assert ts(relet.job.started_at) < ts(leased.lease_expires_at) - timedelta(seconds=15)
    await second.complete(relet)
    await job_in_state(fast, job.id, S.JOB_STATE_SUCCEEDED)
    await second.close()


# -- cancellation ---------------------------------------------------------------------------------
async def test_cancel_of_a_running_job_is_pushed_and_ends_it_cancelled(
    channel: grpc.aio.Channel,
) -> None:
    worker = await RawWorker(channel).open()
    job = (await enqueue(channel)).job
    leased = await worker.next_job()
    resp = await cancel_job(channel, job.id)
    assert resp.outcome == 2  # CANCEL_OUTCOME_CANCEL_REQUESTED
    assert resp.job.cancel_requested and resp.job.state == S.JOB_STATE_RUNNING
    notice = (await worker.next_of("cancel")).cancel
    assert notice.job_id == job.id
    await worker.cancelled(leased)
    done = await job_in_state(channel, job.id, S.JOB_STATE_CANCELLED)
    assert done.HasField("finished_at")
    await worker.close()


async def test_a_job_that_finishes_despite_a_cancel_request_succeeds(
    channel: grpc.aio.Channel,
) -> None:
    worker = await RawWorker(channel).open()
    job = (await enqueue(channel)).job
    leased = await worker.next_job()
    await cancel_job(channel, job.id)
    await worker.next_of("cancel")
    await worker.complete(leased, result={"ok": True})
    done = await job_in_state(channel, job.id, S.JOB_STATE_SUCCEEDED)
    assert dict(done.result) == {"ok": True}
    await worker.close()


async def test_a_cancel_requested_job_is_never_leased_again(fast: grpc.aio.Channel) -> None:
    job = (await enqueue(fast, max_attempts=5)).job
    first = await RawWorker(fast).open(worker_id="first")
    await first.next_job()
    await cancel_job(fast, job.id)
    await first.next_of("cancel")
    first.cancel()  # the worker dies without answering: the release must not requeue it
    done = await job_in_state(fast, job.id, S.JOB_STATE_CANCELLED)
    assert done.errors[-1].source == "stream_closed"
    second = await RawWorker(fast).open(worker_id="second")
    sentinel = (await enqueue(fast, priority=10)).job
    assert (await second.next_job()).job.id == sentinel.id
    assert second.received == 1
    await second.close()


async def test_the_claim_skips_cancel_requested_jobs(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    # A cancel request racing the claim can leave a queued job flagged; it must stay put.
    flagged = (await enqueue(channel, priority=-10)).job
    await db.execute(
        "UPDATE jobqueue.jobs SET cancel_requested = true WHERE id = $1", uuid.UUID(flagged.id)
    )
    plain = (await enqueue(channel, priority=0)).job
    worker = await RawWorker(channel).open()
    assert (await worker.next_job()).job.id == plain.id
    await worker.sync()
    assert worker.received == 1
    assert (await get_job(channel, flagged.id)).state == S.JOB_STATE_QUEUED
    await worker.close()


# -- scheduling, flow control, order ------------------------------------------------------------
async def test_a_scheduled_job_is_delivered_on_time(channel: grpc.aio.Channel) -> None:
    worker = await RawWorker(channel).open()
    run_at = datetime.now(UTC) + timedelta(seconds=1.5)
    req_at = job_pb2.Job().run_at
    req_at.FromDatetime(run_at)
    job = (await enqueue(channel, run_at=req_at)).job
    assert job.state == S.JOB_STATE_SCHEDULED
    leased = await worker.next_job(within=10)
    received = datetime.now(UTC)
    assert leased.job.id == job.id
    started = ts(leased.job.started_at)
    assert started >= run_at, "leased before run_at"
    assert received >= run_at
    assert received - run_at < timedelta(seconds=1), f"late by {received - run_at}"
    await worker.complete(leased)
    await worker.close()


async def test_max_in_flight_is_never_exceeded(channel: grpc.aio.Channel) -> None:
    limit, total = 3, 15
    jobs = await enqueue_many(channel, total)
    worker = await RawWorker(channel).open(max_in_flight=limit)
    outstanding: list[w.LeasedJob] = []
    seen: list[str] = []
    most = 0
    while len(seen) < total:
        outstanding.append(await worker.next_job())
        seen.append(outstanding[-1].job.id)
        while not worker.jobs.empty():
            outstanding.append(worker.jobs.get_nowait())
            seen.append(outstanding[-1].job.id)
        most = max(most, len(outstanding))
        assert len(outstanding) <= limit, f"{len(outstanding)} jobs out on one stream"
        if len(outstanding) == limit or len(seen) == total:
            await worker.sync()  # anything pushed before this point has arrived
            while not worker.jobs.empty():
                outstanding.append(worker.jobs.get_nowait())
                seen.append(outstanding[-1].job.id)
            assert len(outstanding) <= limit, f"{len(outstanding)} jobs out on one stream"
            await worker.complete(outstanding.pop(0))
    assert most == limit
    assert sorted(seen) == sorted(j.id for j in jobs)
    await worker.complete(*outstanding)
    await worker.close()


async def test_priority_order_holds_within_a_queue(channel: grpc.aio.Channel) -> None:
    priorities = [5, -1, 3, 0, 10, -7, 3, 0, 2, -1]
    jobs = [(await enqueue(channel, priority=p)).job for p in priorities]
    expected = [j.id for _, _, j in sorted((j.priority, n, j) for n, j in enumerate(jobs))]
    worker = await RawWorker(channel).open(max_in_flight=1)
    order = []
    for _ in jobs:
        leased = await worker.next_job()
        order.append(leased.job.id)
        await worker.complete(leased)
    assert order == expected
    await worker.close()


async def test_many_streams_share_the_claims_and_get_each_job_once(
    channel: grpc.aio.Channel,
) -> None:
    workers = [await RawWorker(channel).open(max_in_flight=5, worker_id=f"w{i}") for i in range(4)]
    for wk in workers:
        await wk.sync()
    jobs = await enqueue_many(channel, 100)
    seen: dict[str, int] = {}
    per_worker = [0] * len(workers)

    async def run(i: int, wk: RawWorker) -> None:
        while sum(seen.values()) < len(jobs):
            try:
                leased = await wk.next_job(within=0.2)
            except TimeoutError:
                continue
            seen[leased.job.id] = seen.get(leased.job.id, 0) + 1
            per_worker[i] += 1
            await wk.complete(leased)

    await asyncio.wait_for(asyncio.gather(*(run(i, wk) for i, wk in enumerate(workers))), 30)
    assert set(seen) == {j.id for j in jobs}
    assert set(seen.values()) == {1}, "a job was delivered twice"
    assert all(per_worker), f"some stream got nothing: {per_worker}"
    for j in jobs:
        await job_in_state(channel, j.id, S.JOB_STATE_SUCCEEDED)
    for wk in workers:
        await wk.close()


async def test_a_paused_queue_hands_out_nothing_until_resumed(channel: grpc.aio.Channel) -> None:
    queues = qsg.QueueServiceStub(channel)
    await queues.PauseQueue(qs.PauseQueueRequest(name="paused"))
    held = (await enqueue(channel, queue="paused", priority=-10)).job  # enqueue still works
    worker = await RawWorker(channel).open(queues=("paused", "open"))
    other = (await enqueue(channel, queue="open")).job
    got = await worker.next_job()
    assert got.job.id == other.id, "the paused queue's job came first"
    await worker.complete(got)
    await worker.sync()
    assert worker.received == 1
    assert (await get_job(channel, held.id)).state == S.JOB_STATE_QUEUED
    await queues.ResumeQueue(qs.ResumeQueueRequest(name="paused"))
    resumed = await worker.next_job()
    assert resumed.job.id == held.id
    await worker.complete(resumed)
    await job_in_state(channel, held.id, S.JOB_STATE_SUCCEEDED)
    await worker.close()


async def test_a_nul_in_an_error_message_does_not_sink_the_batch(
    channel: grpc.aio.Channel,
) -> None:
    """jsonb cannot hold NUL: the server drops it rather than failing the whole settle."""
    worker = await RawWorker(channel).open(max_in_flight=2)
    a = (await enqueue(channel, "nul")).job
    b = (await enqueue(channel, "nul")).job
    first, second = await worker.next_job(), await worker.next_job()
    await worker.fail(first, message="bad\x00byte")
    await worker.complete(second)
    by_id = {first.job.id: first, second.job.id: second}
    assert set(by_id) == {a.id, b.id}
    failed = await job_in_state(channel, first.job.id, job_pb2.JOB_STATE_RETRYING)
    assert failed.last_error.message == "badbyte"
    await job_in_state(channel, second.job.id, job_pb2.JOB_STATE_SUCCEEDED)
    await worker.close()


async def test_a_stream_refused_mid_stream_always_hears_why(channel: grpc.aio.Channel) -> None:
    """A refusal that comes while the server is writing (here: the heartbeat's answer) must still
    reach the client as its status; it once ended with no status at all, now and then."""
    lease = channel.stream_stream("/jobqueue.v1.WorkerService/Lease")
    open_ = w.LeaseRequest(open=w.LeaseOpen(queues=["refused"])).SerializeToString()
    heartbeat = w.LeaseRequest(heartbeat=w.Heartbeat()).SerializeToString()
    for _ in range(40):
        call = lease(iter([open_, heartbeat, open_]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _msg in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
