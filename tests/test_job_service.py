"""JobService end to end: a real gRPC server over a real PostgreSQL, every method, every error."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from jobqueue_grpc.server import LIVENESS, SERVICE_NAMES, JobQueueServer
from jobqueue_grpc.store import Store
from tests import conftest
from tests.conftest import ServerFactory
from tests.support import free_port

pb = job_service_pb2
T = TypeVar("T")
MiB = 1024 * 1024


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


def payload(**fields: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(fields)
    return s


def job_req(**fields: Any) -> job_service_pb2.EnqueueRequest:
    fields.setdefault("kind", "send_email")
    return pb.EnqueueRequest(**fields)


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str
    violations: dict[str, str]  # field -> description


async def fails(call: Awaitable[Any]) -> Failure:
    """Awaits a call that must fail; returns its code, message, ErrorInfo reason and violations."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    status = rpc_status.from_call(err)
    assert status is not None, f"{err.code()} without rich details: {err.details()}"
    reason, violations = "", {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            ei = error_details_pb2.ErrorInfo()
            detail.Unpack(ei)
            assert ei.domain == "jobqueue-grpc"
            reason = ei.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            violations = {v.field: v.description for v in br.field_violations}
    assert reason, "every error carries ErrorInfo with a reason"
    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        assert violations, "INVALID_ARGUMENT carries BadRequest field violations"
    return Failure(err.code(), err.details() or "", reason, violations)


async def count(db: asyncpg.Connection, where: str = "true", *args: Any) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM jobqueue.jobs WHERE {where}", *args))


async def set_state(db: asyncpg.Connection, job_id: str, state: str) -> None:
    await db.execute("UPDATE jobqueue.jobs SET state = $2 WHERE id = $1", uuid.UUID(job_id), state)


# -- Enqueue --------------------------------------------------------------------------------------
async def test_enqueue_returns_the_job_with_defaults(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    resp = await stub.Enqueue(
        job_req(payload=payload(to="a@example.com", n=3, tags=["x", "y"], nested={"ok": True}))
    )
    assert resp.created
    job = resp.job
    assert uuid.UUID(job.id)
    assert (job.queue, job.kind, job.priority) == ("default", "send_email", 0)
    assert job.max_attempts == 5  # the server default
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert job.attempt == 0 and not job.cancel_requested
    assert dict(job.payload) == {
        "to": "a@example.com",
        "n": 3.0,
        "tags": ["x", "y"],
        "nested": {"ok": True},
    }
    assert job.lease_duration.seconds == 30
    assert job.HasField("created_at") and job.HasField("run_at")
    row = await db.fetchrow(
        "SELECT kind, payload->>'to' AS to, jsonb_typeof(payload->'n') AS n"
        " FROM jobqueue.jobs WHERE id = $1",
        uuid.UUID(job.id),
    )
    assert row is not None
    assert (row["kind"], row["to"], row["n"]) == ("send_email", "a@example.com", "number")


async def test_enqueue_keeps_every_settable_field(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    run_at = timestamp_pb2.Timestamp()
    run_at.FromDatetime(datetime.now(UTC) + timedelta(hours=2))
    req = job_req(
        queue="emails.v2",
        kind="render-pdf",
        priority=-7,
        max_attempts=1,
        run_at=run_at,
        idempotency_key="order-17",
    )
    req.lease_duration.FromSeconds(90)
    req.retry_policy.backoff_base.FromSeconds(2)
    req.retry_policy.backoff_cap.FromSeconds(60)
    job = (await stub.Enqueue(req)).job
    assert (job.queue, job.kind, job.priority, job.max_attempts) == (
        "emails.v2",
        "render-pdf",
        -7,
        1,
    )
    assert job.state == job_pb2.JOB_STATE_SCHEDULED
    assert job.run_at.ToSeconds() == run_at.ToSeconds()
    assert job.idempotency_key == "order-17"
    assert job.lease_duration.seconds == 90
    assert job.retry_policy.backoff_base.seconds == 2
    assert job.retry_policy.backoff_cap.seconds == 60
    got = (await stub.GetJob(pb.GetJobRequest(id=job.id))).job
    assert got == job


async def test_enqueue_with_a_known_key_returns_the_existing_job(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    first = await stub.Enqueue(job_req(idempotency_key="k1", payload=payload(v=1)))
    again = await stub.Enqueue(job_req(idempotency_key="k1", kind="other", payload=payload(v=2)))
    assert first.created and not again.created
    assert again.job.id == first.job.id
    assert again.job.kind == "send_email" and dict(again.job.payload) == {"v": 1.0}
    assert await count(db) == 1


async def test_twenty_concurrent_enqueues_with_one_key_make_one_job(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    calls = [
        stub.Enqueue(job_req(idempotency_key="same-key", payload=payload(i=i))) for i in range(20)
    ]
    results = await asyncio.gather(*calls)
    assert sum(r.created for r in results) == 1
    assert len({r.job.id for r in results}) == 1
    assert await count(db) == 1
    assert await count(db, "idempotency_key = 'same-key'") == 1


async def test_twenty_concurrent_enqueues_with_one_key_across_two_servers(
    make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    """Two replicas (each with its own group-commit enqueuer) still make exactly one job."""
    a, b = await make_server(), await make_server()
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ca,
        grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as cb,
    ):
        stubs = [job_service_pb2_grpc.JobServiceStub(c) for c in (ca, cb)]
        results = await asyncio.gather(
            *(stubs[i % 2].Enqueue(job_req(idempotency_key="x-replica")) for i in range(20))
        )
    assert sum(r.created for r in results) == 1
    assert len({r.job.id for r in results}) == 1
    assert await count(db) == 1


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"queue": "Bad Queue"}, "queue", "INVALID_ARGUMENT"),
        ({"queue": "q" * 65}, "queue", "INVALID_ARGUMENT"),
        ({"kind": "Send Email"}, "kind", "INVALID_ARGUMENT"),
        ({"kind": "k" * 129}, "kind", "INVALID_ARGUMENT"),
        ({"kind": ""}, "kind", "INVALID_ARGUMENT"),
        ({"max_attempts": -1}, "max_attempts", "INVALID_ARGUMENT"),
        ({"idempotency_key": "k" * 256}, "idempotency_key", "INVALID_ARGUMENT"),
        ({"payload": payload(x=float("nan"))}, "payload", "INVALID_ARGUMENT"),
        ({"payload": payload(x=float("inf"))}, "payload", "INVALID_ARGUMENT"),
        ({"payload": payload(s="nul\x00inside")}, "payload", "INVALID_ARGUMENT"),
        ({"payload": payload(blob="x" * MiB)}, "payload", "PAYLOAD_TOO_LARGE"),
    ],
)
async def test_enqueue_rejects_bad_requests_before_the_database(
    stub: job_service_pb2_grpc.JobServiceStub,
    db: asyncpg.Connection,
    fields: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    f = await fails(stub.Enqueue(job_req(**fields)))
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f.reason == reason
    assert field in f.violations
    assert await count(db) == 0


async def test_text_that_only_looks_like_an_escaped_nul_is_kept(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    text = "C:\\u0000\\dir \\\\u0000"  # backslashes, not NUL characters
    job = (await stub.Enqueue(job_req(payload=payload(path=text)))).job
    got = (await stub.GetJob(pb.GetJobRequest(id=job.id))).job
    assert got.payload["path"] == text


async def test_payload_at_the_limit_is_accepted(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    # {"b":"xxx..."} encodes to the string's length plus 8 bytes.
    at_limit = await stub.Enqueue(job_req(payload=payload(b="x" * (MiB - 8))))
    assert at_limit.created
    f = await fails(stub.Enqueue(job_req(payload=payload(b="x" * (MiB - 7)))))
    assert f.reason == "PAYLOAD_TOO_LARGE"
    assert str(MiB) in f.violations["payload"]


async def test_a_payload_limit_from_config_applies(make_server: ServerFactory) -> None:
    srv = await make_server(payload_max_bytes=64)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        assert (await stub.Enqueue(job_req(payload=payload(s="x" * 40)))).created
        f = await fails(stub.Enqueue(job_req(payload=payload(s="x" * 60))))
    assert f.reason == "PAYLOAD_TOO_LARGE"


async def test_every_violation_of_one_request_is_reported(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    f = await fails(stub.Enqueue(job_req(queue="NO", kind="", priority=2_000_000)))
    assert set(f.violations) == {"queue", "kind", "priority"}
    assert "queue" in f.message


# -- EnqueueBatch ---------------------------------------------------------------------------------
async def test_batch_results_are_in_order_with_created(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    existing = (await stub.Enqueue(job_req(idempotency_key="old"))).job
    reqs = [job_req(kind=f"k{i}", payload=payload(i=i)) for i in range(5)]
    reqs.insert(2, job_req(idempotency_key="old"))
    reqs.append(job_req(idempotency_key="new"))
    reqs.append(job_req(idempotency_key="new", kind="dup"))
    resp = await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs))
    assert [r.created for r in resp.results] == [True, True, False, True, True, True, True, False]
    assert resp.results[2].job.id == existing.id
    assert [r.job.kind for r in resp.results if r.created][:5] == [f"k{i}" for i in range(5)]
    assert resp.results[7].job.id == resp.results[6].job.id
    assert resp.results[7].job.kind == "send_email"
    assert await count(db) == 1 + 5 + 1


async def test_a_batch_of_a_thousand_is_one_transaction(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    reqs = [job_req(queue="bulk", payload=payload(i=i)) for i in range(1000)]
    resp = await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs))
    assert len(resp.results) == 1000
    assert [r.job.payload["i"] for r in resp.results] == list(range(1000))
    assert await count(db, "queue = 'bulk'") == 1000
    created = await db.fetchval("SELECT count(DISTINCT created_at) FROM jobqueue.jobs")
    assert created == 1  # one transaction: one now()


async def test_a_batch_with_one_bad_job_inserts_nothing(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    reqs = [job_req() for _ in range(5)]
    reqs[3] = job_req(kind="Not Valid")
    f = await fails(stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs)))
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(f.violations) == ["jobs[3].kind"]
    assert "nothing enqueued" in f.message
    assert await count(db) == 0


async def test_a_batch_reports_every_bad_job(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    reqs = [
        job_req(),
        job_req(payload=payload(x=float("nan"))),
        job_req(queue="UPPER"),
        job_req(payload=payload(b="x" * MiB)),
    ]
    f = await fails(stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs)))
    assert set(f.violations) == {"jobs[1].payload", "jobs[2].queue", "jobs[3].payload"}
    assert await count(db) == 0


@pytest.mark.parametrize("n", [0, 1001])
async def test_batch_size_limits(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection, n: int
) -> None:
    f = await fails(stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=[job_req()] * n)))
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "jobs" in f.violations
    assert "1000" in f.violations["jobs"]
    assert await count(db) == 0


# -- GetJob ---------------------------------------------------------------------------------------
async def test_get_job(stub: job_service_pb2_grpc.JobServiceStub) -> None:
    job = (await stub.Enqueue(job_req(payload=payload(a="b")))).job
    got = (await stub.GetJob(pb.GetJobRequest(id=job.id))).job
    assert got == job
    upper = (await stub.GetJob(pb.GetJobRequest(id=job.id.upper()))).job
    assert upper.id == job.id


async def test_get_unknown_job_is_not_found(stub: job_service_pb2_grpc.JobServiceStub) -> None:
    missing = str(uuid.uuid4())
    f = await fails(stub.GetJob(pb.GetJobRequest(id=missing)))
    assert f.code == grpc.StatusCode.NOT_FOUND
    assert f.reason == "JOB_NOT_FOUND"
    assert missing in f.message


@pytest.mark.parametrize("bad", ["", "42", "not-a-uuid", "0b9e0b1c-0000-0000-0000-00000000000z"])
async def test_malformed_ids_are_invalid_argument(
    stub: job_service_pb2_grpc.JobServiceStub, bad: str
) -> None:
    for call in (
        stub.GetJob(pb.GetJobRequest(id=bad)),
        stub.CancelJob(pb.CancelJobRequest(id=bad)),
    ):
        f = await fails(call)
        assert f.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f.reason == "MALFORMED_ID"
        assert list(f.violations) == ["id"]


# -- ListJobs -------------------------------------------------------------------------------------
async def _list_all(
    stub: job_service_pb2_grpc.JobServiceStub, **req: Any
) -> tuple[list[job_pb2.Job], int]:
    """Every page of one listing; returns the jobs and the number of pages."""
    out: list[job_pb2.Job] = []
    token, pages = "", 0
    while True:
        resp = await stub.ListJobs(pb.ListJobsRequest(page_token=token, **req))
        out.extend(resp.jobs)
        pages += 1
        token = resp.next_page_token
        if not token:
            return out, pages


async def test_list_pages_return_every_job_once_newest_first(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    ids: list[str] = []
    for n in (3, 1, 4, 2):  # four transactions: ties on created_at inside each
        resp = await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=[job_req()] * n))
        ids.extend(r.job.id for r in resp.results)
    jobs, pages = await _list_all(stub, page_size=3)
    assert pages == 4
    assert sorted(j.id for j in jobs) == sorted(ids)
    assert len({j.id for j in jobs}) == len(ids) == 10
    keys = [(j.created_at.ToNanoseconds(), uuid.UUID(j.id)) for j in jobs]
    assert keys == sorted(keys, reverse=True)
    assert {j.id for j in jobs[:2]} == set(ids[-2:])  # the last batch comes first

    whole = await stub.ListJobs(pb.ListJobsRequest())  # default page size holds them all
    assert [j.id for j in whole.jobs] == [j.id for j in jobs]
    assert whole.next_page_token == ""


async def test_list_filters_by_queue_kind_and_state(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    reqs = [
        job_req(queue="a", kind="x"),
        job_req(queue="a", kind="y"),
        job_req(queue="b", kind="x"),
        job_req(queue="b", kind="y"),
        job_req(queue="b", kind="y"),
    ]
    resp = await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs))
    ids = [r.job.id for r in resp.results]
    await set_state(db, ids[4], "succeeded")

    def listed(jobs: list[job_pb2.Job]) -> set[str]:
        return {j.id for j in jobs}

    assert listed((await _list_all(stub, queue="a"))[0]) == set(ids[:2])
    assert listed((await _list_all(stub, kind="y"))[0]) == {ids[1], ids[3], ids[4]}
    assert listed((await _list_all(stub, queue="b", kind="y"))[0]) == {ids[3], ids[4]}
    succeeded = (await _list_all(stub, state=job_pb2.JOB_STATE_SUCCEEDED))[0]
    assert listed(succeeded) == {ids[4]}
    assert succeeded[0].state == job_pb2.JOB_STATE_SUCCEEDED
    queued = (await _list_all(stub, queue="b", state=job_pb2.JOB_STATE_QUEUED, page_size=1))[0]
    assert listed(queued) == {ids[2], ids[3]}
    assert (await _list_all(stub, queue="nothing-here"))[0] == []


async def test_list_rejects_bad_arguments(stub: job_service_pb2_grpc.JobServiceStub) -> None:
    await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=[job_req()] * 3))
    f = await fails(stub.ListJobs(pb.ListJobsRequest(page_size=1001)))
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in f.violations
    f = await fails(stub.ListJobs(pb.ListJobsRequest(page_size=-1)))
    assert "page_size" in f.violations
    f = await fails(stub.ListJobs(pb.ListJobsRequest(queue="Bad!")))
    assert "queue" in f.violations
    f = await fails(stub.ListJobs(pb.ListJobsRequest(kind="Bad!")))
    assert "kind" in f.violations
    f = await fails(stub.ListJobs(pb.ListJobsRequest(state=99)))  # type: ignore[arg-type]
    assert "state" in f.violations

    # page_size 1000 is allowed
    assert len((await stub.ListJobs(pb.ListJobsRequest(page_size=1000))).jobs) == 3


async def test_forged_or_reused_page_tokens_are_invalid_argument(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=[job_req(queue="a")] * 3))
    first = await stub.ListJobs(pb.ListJobsRequest(queue="a", page_size=1))
    assert first.next_page_token
    for token in ("garbage", first.next_page_token[:-3] + "AAA", "eyJ0IjogMX0"):
        f = await fails(stub.ListJobs(pb.ListJobsRequest(queue="a", page_token=token)))
        assert f.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f.reason == "INVALID_PAGE_TOKEN"
        assert "page_token" in f.violations
    # a token is bound to the filters it was issued for
    f = await fails(stub.ListJobs(pb.ListJobsRequest(queue="b", page_token=first.next_page_token)))
    assert f.reason == "INVALID_PAGE_TOKEN"
    # the genuine token still works, and page_size may change between pages
    rest = await stub.ListJobs(
        pb.ListJobsRequest(queue="a", page_size=5, page_token=first.next_page_token)
    )
    assert len(rest.jobs) == 2 and rest.next_page_token == ""


# -- CancelJob ------------------------------------------------------------------------------------
async def test_cancel_queued_job(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    job = (await stub.Enqueue(job_req())).job
    resp = await stub.CancelJob(pb.CancelJobRequest(id=job.id))
    assert resp.outcome == pb.CANCEL_OUTCOME_CANCELLED
    assert resp.job.state == job_pb2.JOB_STATE_CANCELLED
    assert resp.job.HasField("finished_at")
    assert await count(db, "state = 'cancelled'") == 1


async def test_cancel_scheduled_job(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    run_at = timestamp_pb2.Timestamp()
    run_at.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    job = (await stub.Enqueue(job_req(run_at=run_at))).job
    assert job.state == job_pb2.JOB_STATE_SCHEDULED
    resp = await stub.CancelJob(pb.CancelJobRequest(id=job.id))
    assert resp.outcome == pb.CANCEL_OUTCOME_CANCELLED
    assert resp.job.state == job_pb2.JOB_STATE_CANCELLED
    assert await count(db, "state = 'cancelled'") == 1


async def test_cancel_retrying_job(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    job = (await stub.Enqueue(job_req())).job
    await set_state(db, job.id, "retrying")
    resp = await stub.CancelJob(pb.CancelJobRequest(id=job.id))
    assert resp.outcome == pb.CANCEL_OUTCOME_CANCELLED
    assert resp.job.state == job_pb2.JOB_STATE_CANCELLED
    assert await count(db, "state = 'cancelled'") == 1


async def test_cancel_running_job_requests_cancel(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    job = (await stub.Enqueue(job_req())).job
    await db.execute(
        "UPDATE jobqueue.jobs SET state = 'running', attempt = 1, worker_id = 'w1',"
        " lease_token = $2, lease_expires_at = now() + interval '30 seconds', started_at = now()"
        " WHERE id = $1",
        uuid.UUID(job.id),
        uuid.uuid4(),
    )
    resp = await stub.CancelJob(pb.CancelJobRequest(id=job.id))
    assert resp.outcome == pb.CANCEL_OUTCOME_CANCEL_REQUESTED
    assert resp.job.state == job_pb2.JOB_STATE_RUNNING
    assert resp.job.cancel_requested
    assert resp.job.worker_id == "w1"
    row = await db.fetchrow(
        "SELECT state, cancel_requested FROM jobqueue.jobs WHERE id = $1", uuid.UUID(job.id)
    )
    assert row is not None and (row["state"], row["cancel_requested"]) == ("running", True)
    # asking again is harmless: the same outcome
    again = await stub.CancelJob(pb.CancelJobRequest(id=job.id))
    assert again.outcome == pb.CANCEL_OUTCOME_CANCEL_REQUESTED
    assert (await stub.GetJob(pb.GetJobRequest(id=job.id))).job.cancel_requested


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
async def test_cancel_terminal_job_is_failed_precondition(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection, state: str
) -> None:
    job = (await stub.Enqueue(job_req())).job
    await set_state(db, job.id, state)
    f = await fails(stub.CancelJob(pb.CancelJobRequest(id=job.id)))
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f.reason == "JOB_TERMINAL"
    assert state.upper() in f.message
    assert await count(db, "state = $1", state) == 1


async def test_cancel_twice_second_is_terminal(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    job = (await stub.Enqueue(job_req())).job
    await stub.CancelJob(pb.CancelJobRequest(id=job.id))
    f = await fails(stub.CancelJob(pb.CancelJobRequest(id=job.id)))
    assert (f.code, f.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_TERMINAL")
    assert "CANCELLED" in f.message


async def test_cancel_unknown_job_is_not_found(stub: job_service_pb2_grpc.JobServiceStub) -> None:
    f = await fails(stub.CancelJob(pb.CancelJobRequest(id=str(uuid.uuid4()))))
    assert (f.code, f.reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")


# -- the database unreachable ---------------------------------------------------------------------
@pytest.fixture
async def unreachable_server(db_url: str) -> AsyncIterator[JobQueueServer]:
    """A server whose database does not answer: a pool that connects lazily to a dead port."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    pool = await asyncpg.create_pool(url, min_size=0, max_size=2, timeout=5)
    srv = JobQueueServer(conftest.test_settings(db_url, database_url=url), Store(pool))
    await srv.start()
    yield srv
    await srv.stop()
    await pool.close()


async def test_database_unreachable_is_unavailable(unreachable_server: JobQueueServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{unreachable_server.port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        calls: list[Awaitable[Any]] = [
            stub.Enqueue(job_req()),
            stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=[job_req()])),
            stub.GetJob(pb.GetJobRequest(id=str(uuid.uuid4()))),
            stub.ListJobs(pb.ListJobsRequest()),
            stub.CancelJob(pb.CancelJobRequest(id=str(uuid.uuid4()))),
        ]
        for call in calls:
            f = await fails(call)
            assert f.code == grpc.StatusCode.UNAVAILABLE
            assert f.reason == "DATABASE_UNAVAILABLE"
            assert "127.0.0.1" not in f.message and "Traceback" not in f.message
        # validation still answers first: nothing needs the database to reject this
        f = await fails(stub.GetJob(pb.GetJobRequest(id="nope")))
        assert f.code == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(ch)
        resp = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # not ready, but alive: a liveness probe must not restart it for the database's sake
        resp = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


# -- health ---------------------------------------------------------------------------------------
async def test_health_per_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", *SERVICE_NAMES]:
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def _next(it: AsyncIterator[T]) -> T:
    return await asyncio.wait_for(it.__anext__(), timeout=10)


async def test_health_goes_not_serving_at_the_first_moment_of_shutdown(
    make_server: ServerFactory,
) -> None:
    srv = await make_server(grace_period=5.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        calls = [
            health.Watch(health_pb2.HealthCheckRequest(service=name))
            for name in ["", "jobqueue.v1.JobService"]
        ]
        watches = [call.__aiter__() for call in calls]
        for it in watches:
            assert (await _next(it)).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(srv.stop())
        # Watchers (load balancers, kubelets) hear NOT_SERVING before the server goes away.
        for it in watches:
            assert (await _next(it)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        for call in calls:
            call.cancel()
        await asyncio.wait_for(stopping, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
