"""/metrics: scraped over HTTP after a real run (worker, retries, failures, cancels), the counters
and gauges agree with what the database holds."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from jobqueue_grpc import AsyncClient, DoNotRetry, JobContext, Worker
from jobqueue_grpc.gen.jobqueue.v1 import (
    job_service_pb2,
    job_service_pb2_grpc,
    queue_service_pb2,
    queue_service_pb2_grpc,
)
from jobqueue_grpc.server import JobQueueServer
from tests.conftest import ServerFactory
from tests.lease_helpers import RawWorker
from tests.support import free_port, running, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


async def scrape(port: int) -> Samples:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    out: Samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over every sample whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


@pytest.fixture
async def metered(make_server: ServerFactory) -> JobQueueServer:
    return await make_server(metrics_port=free_port(), backoff_base=0.05, backoff_cap=0.2)


async def test_metrics_agree_with_the_database(
    metered: JobQueueServer, db: asyncpg.Connection
) -> None:
    assert metered.metrics is not None
    port = metered.metrics.port
    q = "m" + uuid.uuid4().hex[:12]
    address = f"127.0.0.1:{metered.port}"
    before = await scrape(port)
    enqueue_ok = "/jobqueue.v1.JobService/Enqueue"

    async with AsyncClient(address) as client:
        for _ in range(5):
            await client.enqueue("ok", {"n": 1}, queue=q)
        await client.enqueue_batch([{"kind": "flaky", "queue": q} for _ in range(3)])
        await client.enqueue_batch([{"kind": "bad", "queue": q} for _ in range(2)])
        for _ in range(2):
            await client.enqueue("doomed", {}, queue=q, max_attempts=2)
        first = await client.enqueue("ok", {}, queue=q, idempotency_key=q)
        again = await client.enqueue("ok", {}, queue=q, idempotency_key=q)  # not created
        assert first.created and not again.created
        later = datetime.now(UTC) + timedelta(hours=1)
        to_cancel = [
            (await client.enqueue("later", {}, queue=q, run_at=later)).job.id for _ in range(3)
        ]
        for job_id in to_cancel[:2]:
            await client.cancel_job(job_id)
        with pytest.raises(grpc.aio.AioRpcError):
            await client.enqueue("", {}, queue=q)  # INVALID_ARGUMENT: counted as an RPC only

        # Before any worker: depth by state is read from the database at scrape.
        s = await scrape(port)
        assert total(s, "jobqueue_queue_depth", queue=q, state="queued") == 13
        assert total(s, "jobqueue_queue_depth", queue=q, state="scheduled") == 1
        assert total(s, "jobqueue_queue_depth", queue=q, state="running") == 0

        worker = Worker(address, queues=[q], concurrency=4)

        @worker.handler("ok")
        async def ok(ctx: JobContext) -> dict[str, object]:
            return {"done": True}

        @worker.handler("flaky")
        async def flaky(ctx: JobContext) -> None:
            if ctx.attempt == 1:
                raise RuntimeError("first attempt fails")

        @worker.handler("bad")
        async def bad(ctx: JobContext) -> None:
            raise DoNotRetry("never")

        @worker.handler("doomed")
        async def doomed(ctx: JobContext) -> None:
            raise RuntimeError("always")

        async def settled() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM jobqueue.jobs WHERE queue = $1"
                " AND state IN ('queued', 'running', 'retrying')",
                q,
            )
            return bool(n == 0)

        async with running(worker):
            await wait_until(settled, within=60, interval=0.05)
            during = await scrape(port)

    rows = {
        r["state"]: r
        for r in await db.fetch(
            "SELECT state, count(*) AS n, sum(attempt) AS attempts,"
            " sum(jsonb_array_length(errors)) AS failures"
            " FROM jobqueue.jobs WHERE queue = $1 GROUP BY state",
            q,
        )
    }
    dead = await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters WHERE queue = $1", q)
    jobs = sum(r["n"] for r in rows.values())
    attempts = sum(r["attempts"] for r in rows.values())
    failures = sum(r["failures"] for r in rows.values())
    # The run itself, as the database tells it.
    assert (jobs, rows["succeeded"]["n"], rows["failed"]["n"], dead) == (16, 9, 4, 4)
    assert (rows["cancelled"]["n"], rows["scheduled"]["n"]) == (2, 1)
    assert failures == 3 + 2 + 2 * 2

    expected = {
        "jobqueue_jobs_enqueued_total": jobs,
        "jobqueue_jobs_completed_total": rows["succeeded"]["n"],
        "jobqueue_attempts_failed_total": failures,
        "jobqueue_jobs_retried_total": failures - dead,
        "jobqueue_jobs_dead_lettered_total": dead,
        "jobqueue_jobs_cancelled_total": rows["cancelled"]["n"],
        "jobqueue_job_wait_seconds_count": attempts,
        "jobqueue_job_run_seconds_count": attempts,
    }

    async def counters() -> dict[str, float]:
        s = await scrape(port)
        return {name: total(s, name, queue=q) for name in expected}

    async def agree() -> bool:
        return await counters() == expected

    with contextlib.suppress(AssertionError):
        await wait_until(agree, within=10, interval=0.05)
    assert await counters() == expected

    after = await scrape(port)
    # Gauges: the worker's stream was open during the run and closed after; nothing is in flight.
    assert total(during, "jobqueue_lease_streams") == total(before, "jobqueue_lease_streams") + 1
    assert total(after, "jobqueue_lease_streams") == total(before, "jobqueue_lease_streams")
    assert total(after, "jobqueue_jobs_in_flight") == total(before, "jobqueue_jobs_in_flight")
    assert total(after, "jobqueue_queue_depth", queue=q, state="scheduled") == 1
    assert total(after, "jobqueue_queue_depth", queue=q, state="queued") == 0
    assert total(after, "jobqueue_dead_letters", queue=q) == dead

    def rpcs(s: Samples, method: str, code: str) -> float:
        return total(s, "jobqueue_rpcs_total", method=method, code=code)

    # Enqueue calls: 5 + 2 + 2 (idempotent) + 3 (scheduled) OK, one INVALID_ARGUMENT.
    assert rpcs(after, enqueue_ok, "OK") - rpcs(before, enqueue_ok, "OK") == 12
    assert (
        rpcs(after, enqueue_ok, "INVALID_ARGUMENT") - rpcs(before, enqueue_ok, "INVALID_ARGUMENT")
        == 1
    )
    cancel = "/jobqueue.v1.JobService/CancelJob"
    assert rpcs(after, cancel, "OK") - rpcs(before, cancel, "OK") == 2
    lease = "/jobqueue.v1.WorkerService/Lease"
    assert (
        sum(
            total(after, "jobqueue_rpcs_total", method=lease, code=c)
            - total(before, "jobqueue_rpcs_total", method=lease, code=c)
            for c in ("OK", "CANCELLED")
        )
        == 1
    )


async def test_auth_refusals_are_counted_by_code(make_server: ServerFactory) -> None:
    srv = await make_server(metrics_port=free_port(), auth_tokens="producer:metrics-token")
    assert srv.metrics is not None
    method = "/jobqueue.v1.QueueService/ListQueues"
    before = await scrape(srv.metrics.port)
    async with AsyncClient(f"127.0.0.1:{srv.port}", token="metrics-token") as client:
        stub = queue_service_pb2_grpc.QueueServiceStub(client.channel)
        for md in ([], [("authorization", "Bearer metrics-token")]):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ListQueues(queue_service_pb2.ListQueuesRequest(), metadata=md)
    after = await scrape(srv.metrics.port)
    for code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        delta = total(after, "jobqueue_rpcs_total", method=method, code=code) - total(
            before, "jobqueue_rpcs_total", method=method, code=code
        )
        assert delta == 1, code


async def test_drain_and_stream_limit_refusals_are_counted_by_code(
    make_server: ServerFactory,
) -> None:
    srv = await make_server(metrics_port=free_port(), max_lease_streams=1)
    assert srv.metrics is not None
    enqueue = "/jobqueue.v1.JobService/Enqueue"
    lease = "/jobqueue.v1.WorkerService/Lease"
    health_check = "/grpc.health.v1.Health/Check"
    before = await scrape(srv.metrics.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        holder = await RawWorker(ch).open(worker_id="holder")
        refused = await RawWorker(ch).open(worker_id="refused")
        assert await asyncio.wait_for(refused.ended, 10) == grpc.StatusCode.RESOURCE_EXHAUSTED
        await holder.call.done_writing()
        await asyncio.wait_for(holder.ended, 10)

        srv.drain_gate.draining = True
        try:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Enqueue(job_service_pb2.EnqueueRequest(kind="k"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # health stays open while draining
            health = health_pb2_grpc.HealthStub(ch)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        finally:
            srv.drain_gate.draining = False
    after = await scrape(srv.metrics.port)

    def delta(method: str, code: str) -> float:
        return total(after, "jobqueue_rpcs_total", method=method, code=code) - total(
            before, "jobqueue_rpcs_total", method=method, code=code
        )

    assert delta(lease, "RESOURCE_EXHAUSTED") == 1
    assert delta(enqueue, "UNAVAILABLE") == 1
    assert delta(health_check, "OK") == 1


async def test_only_metrics_is_served(metered: JobQueueServer) -> None:
    assert metered.metrics is not None
    assert (await http_get(metered.metrics.port, "/"))[0] == 404
    status, body = await http_get(metered.metrics.port, "/metrics?x=1")
    assert status == 200 and "jobqueue_jobs_enqueued_total" in body


async def test_metrics_port_zero_turns_metrics_off(server: JobQueueServer) -> None:
    assert server.metrics is None


async def test_scrape_survives_a_database_outage(make_server: ServerFactory) -> None:
    srv = await make_server(metrics_port=free_port())
    assert srv.metrics is not None

    async def broken() -> None:
        raise OSError("database down")

    srv.metrics.refresh = broken
    status, body = await http_get(srv.metrics.port, "/metrics")
    assert status == 200 and "jobqueue_rpcs_total" in body
